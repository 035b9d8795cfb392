"""What a file presents to the mapping: its own columns, its partition values, and the columns
other files have (schema drift), each with the run's unified type.

    file_schema(src, options) -> (schema, clashes)
        the file's schema (connectors.readers.read_schema) followed by its Hive partition
        columns (strings); `clashes` are partition names the file also has as a column (the
        file's column is kept: a partition never overrides a real column).
    iter_file_batches(src, columns=..., read=FileRead(...), options=...) -> Iterator[RecordBatch]
        connectors.readers.iter_batches for the file's own columns, with partition values as
        constant columns, columns the file lacks as nulls, and every column cast to its
        unified type (connectors.schema_drift); batches keep the order of `columns`.
    count_rows(src, options) -> int
        rows in the file: the Parquet footer, else a full read of one column.

Files are opened only through the readers (and so through connectors.file_access and the
run's S3Store, passed as `s3`): local paths and s3:// URLs alike.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from connectors import csv_dialect
from connectors.readers import iter_batches, parquet_num_rows, read_schema
from connectors.source_file import SourceFile, one_line
from moesif_backfill.errors import SourceError
from transforms.source_options import SourceOptions

if TYPE_CHECKING:
    from connectors.s3_store import S3Store


@dataclass(frozen=True)
class FileRead:
    """How one file's batches become the batches the mapping reads."""

    partitions: Mapping[str, str | None] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()  # columns other files have: nulls here
    types: Mapping[str, pa.DataType] = field(default_factory=dict)  # cast to these


NO_CHANGES = FileRead()


def file_schema(
    src: SourceFile, options: SourceOptions | None, s3: S3Store | None = None
) -> tuple[pa.Schema, set[str]]:
    schema = read_schema(src, options=options, s3=s3)
    clashes = {name for name, _ in src.layout.partitions if name in schema.names}
    extra = [pa.field(n, pa.string()) for n, _ in src.layout.partitions if n not in clashes]
    return pa.schema([*schema, *extra]), clashes


def iter_file_batches(
    src: SourceFile,
    *,
    columns: Sequence[str],
    read: FileRead = NO_CHANGES,
    text_columns: Collection[str] = (),
    number_columns: Collection[str] = (),
    batch_rows: int = 65_536,
    options: SourceOptions | None = None,
    row_groups: tuple[int, int] | None = None,
    s3: S3Store | None = None,
) -> Iterator[pa.RecordBatch]:
    """`columns` of `src` (names as `file_schema` gives them, or missing ones) in batches of at
    most `batch_rows` rows, all with the same schema (`row_groups`: only those of a Parquet
    file, see connectors.readers.iter_batches)."""
    constant = {c for c in columns if c in read.partitions and c not in read.missing}
    own = [c for c in columns if c not in constant and c not in read.missing]
    texts = [c for c in text_columns if c in own]
    if not own:  # only partition values / nulls asked for: read one column for the row count
        own = texts = read_schema(src, options=options, s3=s3).names[:1]
        if not own:
            return iter(())
    batches = iter_batches(
        src,
        columns=own,
        text_columns=texts,
        number_columns=[c for c in number_columns if c in own],
        batch_rows=batch_rows,
        options=options,
        row_groups=row_groups,
        s3=s3,
    )
    own_asked = {c for c in own if c in columns}
    if not constant and not read.missing and not read.types and len(own_asked) == len(columns):
        return batches
    return _adapt(src, batches, columns, read, own_asked)


def _adapt(
    src: SourceFile,
    batches: Iterator[pa.RecordBatch],
    columns: Sequence[str],
    read: FileRead,
    own: set[str],
) -> Iterator[pa.RecordBatch]:
    rows = 0
    for batch in batches:
        n = batch.num_rows
        arrays = []
        for name in columns:
            target = read.types.get(name)
            if name in own:
                arrays.append(_cast(src, batch.column(name), target, name, rows))
            elif name in read.missing:
                arrays.append(pa.nulls(n, target or pa.string()))
            else:
                value = read.partitions[name]
                constant = pa.nulls(n, pa.string()) if value is None else pa.repeat(value, n)
                arrays.append(_cast(src, constant, target, name, rows))
        yield pa.RecordBatch.from_arrays(arrays, names=list(columns))
        rows += n


def _cast(
    src: SourceFile, array: pa.Array, target: pa.DataType | None, name: str, first_row: int
) -> pa.Array:
    if target is None or array.type.equals(target):
        return array
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        row = _first_failing(array, target)
        where = f"data row {first_row + row + 1}" if row is not None else "a batch"
        value = f" ({array[row].as_py()!r})" if row is not None else ""
        raise SourceError(
            f"{src.path}: column {name!r} at {where}{value} cannot be read as {target}, the type "
            f"the other input files give it ({one_line(exc)}). Re-export the files with one "
            "type for the column, or leave the file out."
        ) from exc


def _first_failing(array: pa.Array, target: pa.DataType) -> int | None:
    for i in range(len(array)):
        try:
            array.slice(i, 1).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return i
    return None


def holds_only_nulls(
    src: SourceFile, column: str, options: SourceOptions | None, s3: S3Store | None = None
) -> bool:
    """Whether `column` has no value in the first batch of `src` (the block a text format's
    types are inferred from)."""
    batches = iter_batches(
        src,
        columns=[column],
        text_columns=[column],
        options=options,
        csv_block_bytes=csv_dialect.CSV_BLOCK_BYTES,  # the first batch = the inference block
        s3=s3,
    )
    first = next(iter(batches), None)
    return first is None or first.column(0).null_count == first.num_rows


def count_rows(src: SourceFile, options: SourceOptions | None, s3: S3Store | None = None) -> int:
    """The file's rows: the Parquet footer's count, else a full read of its first column
    (as text: counting must not depend on type inference)."""
    if src.format == "parquet":
        return parquet_num_rows(src, s3)
    first = read_schema(src, options=options, s3=s3).names[:1]
    if not first:
        return 0
    batches = iter_batches(src, columns=first, text_columns=first, options=options, s3=s3)
    return sum(b.num_rows for b in batches)
