"""Binding a mapping to one input file's schema, before anything is sent.

`resolve_mapping` matches every column the mapping reads (exact name first, then a unique
case-insensitive match), checks the column types the mapping needs (the time column, forced
metadata types, transaction_id key columns) and fails with a `MappingError` that names the file,
the mapping field and the available columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from moesif_backfill.errors import MappingError
from transforms.mapping import ColumnSource, MappingSpec


@dataclass(frozen=True)
class ResolvedMapping:
    """A mapping bound to one file's schema.

    ``columns`` maps every column name used in the mapping to the file's physical column name.
    """

    spec: MappingSpec
    columns: dict[str, str]
    schema: pa.Schema

    def physical_columns(self) -> list[str]:
        return list(dict.fromkeys(self.columns.values()))

    def to_logical(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Rename/duplicate a batch of physical columns into the mapping's column names."""
        arrays = [batch.column(phys) for phys in self.columns.values()]
        return pa.RecordBatch.from_arrays(arrays, names=list(self.columns))


def resolve_column(name: str, available: list[str], *, origin: str, field: str) -> str:
    if name in available:
        if available.count(name) > 1:
            raise MappingError(
                f"{origin}: the mapping's {field} column {name!r} is ambiguous: the file has "
                f"{available.count(name)} columns with that name. Re-export the file with "
                "unique column names."
            )
        return name
    matches = [c for c in available if c.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(available) if available else "(none)"
    if not matches:
        raise MappingError(
            f"{origin}: the mapping's {field} names column {name!r}, which this file does not "
            f"have. Available columns: {shown}"
        )
    raise MappingError(
        f"{origin}: the mapping's {field} column {name!r} is ambiguous: it matches "
        f"{', '.join(matches)} case-insensitively. Use the exact name."
    )


def _field_names(spec: MappingSpec) -> dict[str, str]:
    """For error messages: which mapping field uses which column."""
    uses: dict[str, str] = {}
    for label, src in [
        ("action_name", spec.action_name),
        *spec.string_fields().items(),
        *((f"request.{k}", v) for k, v in spec.request_fields().items()),
        *((f"metadata.{k}", v) for k, v in spec.metadata.items()),
    ]:
        if isinstance(src, ColumnSource):
            uses.setdefault(src.column, label)
    uses.setdefault(spec.time.column, "time")
    for col in spec.key_columns():
        uses.setdefault(col, "transaction_id")
    return uses


def resolve_mapping(spec: MappingSpec, schema: pa.Schema, *, origin: str) -> ResolvedMapping:
    """Bind `spec` to `schema`; raises MappingError naming the file, field and columns."""
    columns, missing = find_columns(spec, schema, origin=origin)
    if missing:
        raise next(iter(missing.values()))
    _check_types(spec, schema, columns, origin)
    return ResolvedMapping(spec=spec, columns=columns, schema=schema)


def find_columns(
    spec: MappingSpec, schema: pa.Schema, *, origin: str
) -> tuple[dict[str, str], dict[str, MappingError]]:
    """The binding step of `resolve_mapping`, tolerant of absent columns: (the columns found,
    mapping name -> file column; the error for each column the file does not have at all).
    An ambiguous name still raises."""
    available = list(schema.names)
    lowered = {c.lower() for c in available}
    uses = _field_names(spec)
    columns: dict[str, str] = {}
    missing: dict[str, MappingError] = {}
    for name in spec.referenced_columns():
        try:
            columns[name] = resolve_column(
                name, available, origin=origin, field=uses.get(name, "mapping")
            )
        except MappingError as exc:
            if name in available or name.lower() in lowered:
                raise
            missing[name] = exc
    return columns, missing


def required_columns(spec: MappingSpec) -> list[str]:
    """Columns every input file must have: without them no row of the file could be sent
    (action_name, time, transaction_id); other columns may be absent from some files."""
    cols = [spec.time.column, *spec.key_columns()]
    if isinstance(spec.action_name, ColumnSource):
        cols.insert(0, spec.action_name.column)
    return list(dict.fromkeys(cols))


def _check_types(
    spec: MappingSpec, schema: pa.Schema, columns: dict[str, str], origin: str
) -> None:
    def typ(logical: str) -> pa.DataType:
        t = schema.field(columns[logical]).type
        return t.value_type if pa.types.is_dictionary(t) else t

    check_time_type(spec, typ(spec.time.column), origin)
    for key, src in spec.metadata.items():
        if isinstance(src, ColumnSource) and src.type is not None:
            _check_forced_type(key, src, typ(src.column), origin)
    for col in spec.key_columns():
        kt = typ(col)
        nested = pa.types.is_nested(kt) or pa.types.is_binary(kt) or pa.types.is_large_binary(kt)
        if nested and not (spec.transaction_id.column and pa.types.is_fixed_size_binary(kt)):
            raise MappingError(
                f"{origin}: transaction_id column {col!r} has type {kt}, which has no canonical "
                "text form in ID contract v1; use string, integer, decimal, date or timestamp "
                "columns"
            )


def check_time_type(spec: MappingSpec, t: pa.DataType, origin: str) -> None:
    """MappingError unless `t` can be the time column's type (for a text source: the type its
    values look like, inferred from the file's first block, although they are read as text)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_int = pa.types.is_integer(t) or pa.types.is_floating(t)
    if is_int and spec.time.unit is None:
        raise MappingError(
            f"{origin}: time column {spec.time.column!r} holds numbers ({t}); say which epoch "
            "unit they are in, e.g. time: {column: " + spec.time.column + ", unit: s} "
            "(s, ms, us or ns)"
        )
    time_ok = (
        is_int
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_null(t)
    )
    if not time_ok:
        raise MappingError(
            f"{origin}: time column {spec.time.column!r} has type {t}; expected a timestamp, a "
            "date, an ISO 8601 string or an integer epoch"
        )


def _check_forced_type(key: str, src: ColumnSource, t: pa.DataType, origin: str) -> None:
    """`type: number` needs numbers or text; `type: string` a value with a scalar text form."""
    scalar = not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t))
    if src.type == "number":
        ok = (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_decimal(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_null(t)
        )
    else:
        ok = scalar
    if not ok:
        raise MappingError(
            f"{origin}: metadata.{key} has type: {src.type}, but column {src.column!r} holds "
            f"{t}, which has no JSON {src.type} form; remove `type` or map another column"
        )
