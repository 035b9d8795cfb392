"""Arrow column checks the readers share: selecting columns, and string data that is valid.

select_columns(src, schema, columns) -> pa.Schema     SourceError for unknown/repeated names
check_values(src, batch, first_row)                  SourceError for bytes that are not UTF-8
names_text(schema) -> str                            the column names, for messages
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from connectors.source_file import SourceFile, one_line
from moesif_backfill.errors import SourceError


def select_columns(src: SourceFile, schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    """`schema` restricted to `columns`, in that order; SourceError for unknown names."""
    if columns is None:
        return schema
    repeated = [c for c in columns if schema.get_all_field_indices(c)[1:]]
    if repeated:
        raise SourceError(
            f"{src.path}: the file has several columns named {', '.join(map(repr, repeated))}; "
            "re-export it with unique column names."
        )
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise SourceError(
            f"{src.path}: column(s) {', '.join(map(repr, missing))} not found in the file; its "
            f"columns are: {names_text(schema)}. Check the column names in the mapping (they are "
            "case-sensitive)."
        )
    return pa.schema([schema.field(c) for c in columns])


def names_text(schema: pa.Schema, limit: int = 40) -> str:
    names = schema.names
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "(none)"


def check_values(src: SourceFile, batch: pa.RecordBatch, first_row: int) -> None:
    """SourceError for string data that is not UTF-8 (or otherwise invalid) in `batch`, naming
    the column and the data row. Parquet's reader does not check it; letting it through would
    give a transaction_id computed over raw bytes, or a crash later. Fixed-width columns have
    nothing to check; a full check of the rest costs ~25 ns per string value."""
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_primitive(field.type):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            row = next((i for i in range(len(column)) if not _valid(column.slice(i, 1))), None)
            where = f"at data row {first_row + row + 1}" if row is not None else "in a batch"
            if "UTF8" in str(exc):
                what = "bytes that are not valid UTF-8"
            else:
                what = f"invalid data ({one_line(exc)})"
            raise SourceError(
                f"{src.path}: column {field.name!r} has {what} {where}; re-export the file "
                "(strings as UTF-8)."
            ) from exc


def _valid(arr: pa.Array) -> bool:
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True
