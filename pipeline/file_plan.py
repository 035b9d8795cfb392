"""One input file as a run reads it: its source, the mapping bound to its schema, and how its
columns are read (made by pipeline/binding.py, carried by pipeline.plan.Plan)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from connectors.layouts import NO_CHANGES, FileRead, iter_file_batches
from connectors.s3_store import S3Store
from connectors.source_file import SourceFile
from transforms.schema_match import ResolvedMapping
from transforms.source_options import SourceOptions


@dataclass
class FilePlan:
    src: SourceFile
    resolved: ResolvedMapping
    # Text formats: columns read as text exactly as written (see
    # pipeline.binding.type_text_columns).
    text_columns: list[str]
    rows_estimate: int | None
    # Text formats: metadata columns whose values are all JSON numbers, read as the text of
    # each so that the action keeps every digit written (a double would round
    # 0.123456789012345678); decided before the file's first row is sent.
    number_columns: list[str] = field(default_factory=list)
    # The mapping's `source:` section, and what connectors.layouts adds to the file's own
    # columns: partition values, nulls for columns only other files have, unified types.
    options: SourceOptions | None = None
    read: FileRead = NO_CHANGES
    # A shard of a Parquet file (pipeline/shards.py): only row groups [a, b) are read.
    row_groups: tuple[int, int] | None = None

    def number_text_fields(self) -> list[str]:
        """`number_columns` under the mapping's (logical) column names."""
        return [c for c, phys in self.resolved.columns.items() if phys in self.number_columns]

    def batches(
        self,
        columns: Sequence[str] | None = None,
        *,
        batch_rows: int = 65_536,
        s3: S3Store | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The file's rows as the mapping reads them: `columns` (the file's names, as in
        `resolved.columns`; default: every column the mapping uses), same schema in every
        batch, at most `batch_rows` rows each."""
        return iter_file_batches(
            self.src,
            columns=list(columns) if columns is not None else self.resolved.physical_columns(),
            read=self.read,
            text_columns=self.text_columns,
            number_columns=self.number_columns,
            batch_rows=batch_rows,
            options=self.options,
            row_groups=self.row_groups,
            s3=s3,
        )
