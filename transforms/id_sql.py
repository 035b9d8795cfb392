"""ID contract v1 (docs/transaction-id.md) as one SQL query: the warehouse computes the same
`transaction_id` as `transforms.ids` for every row of an export table.

    transaction_id_sql(namespace, keys, columns, tz=..., dialect=..., table=...) -> str

`keys` are the key columns in declared order with the Arrow type the sample file gave them
(`key_columns_from_schema`); only types whose canon() text every dialect can write exactly are
accepted: text (as is), integers and decimals of scale 0 up to 38 digits (digits), booleans,
dates and timestamps (with a zone or offset: the instant; naive: the wall-clock time in `tz`).
Anything else (floats, decimals with a scale, nested, binary, time of day, all-null columns) is
an `UnsupportedKeyTypeError` naming the column and its type.

A row the Python side rejects gets a NULL `transaction_id`: all key values null, a naive key
time inside a DST gap of `tz`, a key time outside years 0001..9999 in UTC.

The query nests one SELECT per step (no CTEs, no functions: one plain statement that every
dialect runs as is): key times placed in the zone, canon() texts, the name, the SHA-1, the UUID.
A naive time is placed in its zone without the warehouse's own rule for gaps and ambiguous
times (DuckDB's ICU, for one, takes the later instant of a repeated hour): the two offsets in
force one day before and one day after give two candidate instants; a candidate is the time's
instant when its wall-clock time in the zone is the value; with two, the earlier one (the
repeated hour when DST ends); with none, the time does not exist (the DST gap) and the ID is
NULL. This needs at most one offset change within a day or so of the time: in the IANA data
(all 599 zones, 1970-2037, sampled every 3 hours) two changes are never less than 6 days apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from moesif_backfill.errors import ConfigError, UnsupportedKeyTypeError
from transforms.sql_dialects import PLACEHOLDER_TABLE, Dialect, DialectName, dialect

__all__ = ["PLACEHOLDER_TABLE", "KeyColumn", "key_columns_from_schema", "transaction_id_sql"]

KeyKind = Literal["text", "integer", "boolean", "date", "timestamp_tz", "timestamp_naive"]
_PREFIX = "_mb_"  # the query's own columns: a source column may not start with it


@dataclass(frozen=True)
class KeyColumn:
    """One key column: its name in the table and how its canon() text is written."""

    name: str
    kind: KeyKind
    nanos: bool = False  # a timestamp with nanoseconds (floored to microseconds)


def key_kind(name: str, t: pa.DataType, *, text_sample: bool) -> KeyColumn:
    """The key column `name` of Arrow type `t` (from the sample file); for a text sample (CSV,
    NDJSON) every key column is its text as written. UnsupportedKeyTypeError otherwise."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if text_sample or pa.types.is_string(t) or pa.types.is_large_string(t):
        return KeyColumn(name, "text")
    if pa.types.is_string_view(t):
        return KeyColumn(name, "text")
    if pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0 and t.precision <= 38):
        return KeyColumn(name, "integer")
    if pa.types.is_boolean(t):
        return KeyColumn(name, "boolean")
    if pa.types.is_date(t):
        return KeyColumn(name, "date")
    if pa.types.is_timestamp(t):
        kind: KeyKind = "timestamp_naive" if t.tz is None else "timestamp_tz"
        return KeyColumn(name, kind, nanos=t.unit == "ns")
    raise UnsupportedKeyTypeError(f"transaction_id key column {name!r} has type {t}: {_why(t)}")


def _why(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        reason = (
            "canon() writes a float as Python's shortest round-trip repr (1.5, 1e+16), which "
            "no warehouse's float-to-text conversion is guaranteed to match"
        )
    elif pa.types.is_decimal(t) and t.scale == 0:
        reason = (
            "a decimal wider than 38 digits: DuckDB reads it as a double and Snowflake holds "
            "at most 38 digits, so its digits would not survive"
        )
    elif pa.types.is_decimal(t):
        reason = (
            "canon() drops trailing fractional zeros (12.3400 -> 12.34), which warehouses "
            "write differently for decimals with a scale"
        )
    elif pa.types.is_null(t):
        reason = "the sample holds only nulls there, so the column's real type is unknown"
    else:
        reason = "ID contract v1 has no canon() text for it that SQL can write exactly"
    return (
        f"{reason}. Supported key types: text, integers, decimals of scale 0 up to 38 digits, "
        "booleans, dates and timestamps; compute these IDs with moesif-backfill (run "
        "--dry-run) instead, or give a sample file where the column holds its values."
    )


def key_columns_from_schema(
    key: Sequence[str], schema: pa.Schema, *, text_sample: bool
) -> list[KeyColumn]:
    """`key` (the schema's own column names, in declared order) -> typed key columns."""
    return [key_kind(n, schema.field(n).type, text_sample=text_sample) for n in key]


def transaction_id_sql(
    namespace: uuid.UUID,
    keys: Sequence[KeyColumn],
    columns: Sequence[str],
    *,
    tz: str,
    dialect_name: DialectName,
    table: str = PLACEHOLDER_TABLE,
    id_column: str = "transaction_id",
    header: Sequence[str] = (),
) -> str:
    """The query selecting `columns` of `table` plus `id_column` computed by contract v1.

    `header`: comment lines put before the query (without the leading "-- ")."""
    if not keys:
        raise ValueError("a transaction_id key needs at least one column")
    d = dialect(dialect_name)
    clash = [c for c in [*columns, id_column] if c.lower().startswith(_PREFIX)]
    if clash:
        raise ConfigError(
            f"column {clash[0]!r}: names starting with {_PREFIX!r} are the query's own; "
            "rename the column (or pick another --id-column)"
        )
    if id_column.lower() in {c.lower() for c in columns}:
        raise ConfigError(
            f"the export already has a column {id_column!r}: name the computed one otherwise, "
            "e.g. --id-column moesif_transaction_id"
        )
    stages: list[list[tuple[str, str]]] = [[], [], [], []]
    texts = []
    for i, k in enumerate(keys):
        texts.append(f"{_PREFIX}text{i}")
        stages[3].append((texts[-1], _canon_text(d, i, k, tz, stages)))
    name = _name(d, keys, texts)
    stages.append([(f"{_PREFIX}name", name)])
    digest = d.sha1_hex(namespace, f"{_PREFIX}name")
    if digest is not None:
        stages.append([(f"{_PREFIX}sha1", digest)])
    tid = d.uuid5(namespace, f"{_PREFIX}name", f"{_PREFIX}sha1" if digest else None)

    query = ""
    for depth, stage in enumerate(s for s in stages if s):
        extra = ",\n  ".join(f"{expr} AS {alias}" for alias, expr in stage)
        source = f"(\n{_indent(query)}\n)" if query else table
        query = f"SELECT *,\n  {extra}\nFROM {source} AS {_PREFIX}s{depth}"
    selected = ",\n  ".join([*(d.quote(c) for c in columns), f"{tid} AS {d.quote(id_column)}"])
    body = f"SELECT\n  {selected}\nFROM (\n{_indent(query)}\n) AS {_PREFIX}ids"
    comments = "".join(f"-- {line}\n" for line in [*header, d.uuid5_note()])
    return comments + body


def _canon_text(
    d: Dialect, i: int, k: KeyColumn, tz: str, stages: list[list[tuple[str, str]]]
) -> str:
    """The canon() text expression of key `i` (NULL for a null value and for a value without
    canon text); may add helper columns to the first stages."""
    col = d.quote(k.name)
    if k.kind == "text":
        return d.text(col)
    if k.kind == "integer":
        return d.integer_text(col)
    if k.kind == "boolean":
        return f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END"
    if k.kind == "date":
        return d.date_text(col)
    w, a, b, u = (f"{_PREFIX}{p}{i}" for p in ("wall", "a", "b", "utc"))
    if k.kind == "timestamp_tz" or tz == "UTC":
        if k.kind == "timestamp_tz":
            stages[0].append((u, d.utc_naive(col, nanos=k.nanos)))
        else:  # a naive time in UTC is its own UTC time
            stages[0].append((u, d.naive_micros(col, nanos=k.nanos)))
        return f"CASE WHEN {d.in_utc_range(u)} THEN {d.utc_text(u)} END"
    stages[0].append((w, d.naive_micros(col, nanos=k.nanos)))
    # the two candidate instants: the value minus the offset one day before / one day after
    for alias, days in ((a, -1), (b, 1)):
        probe = d.add_days(w, days)
        offset = d.seconds_between(probe, d.wall_clock(probe, tz))
        stages[1].append((alias, d.minus_seconds(w, offset)))
    a_ok = f"{d.wall_clock(a, tz)} = {w}"
    b_ok = f"{d.wall_clock(b, tz)} = {w}"
    # both: the repeated hour, the earlier instant; neither: the DST gap, NULL
    pick = (
        f"CASE WHEN {a_ok} AND {b_ok} THEN LEAST({a}, {b}) WHEN {a_ok} THEN {a} "
        f"WHEN {b_ok} THEN {b} END"
    )
    stages[2].append((u, pick))
    ranged = f"{d.in_utc_range(w)} AND {d.in_utc_range(u)}"
    return f"CASE WHEN {ranged} THEN {d.utc_text(u)} END"


def _name(d: Dialect, keys: Sequence[KeyColumn], texts: Sequence[str]) -> str:
    """'v1' || part(key) ...; NULL when every key value is null (the row is rejected) and,
    since || gives NULL for a NULL operand, when a non-null value has no canon text.
    `texts`: the columns holding each key's canon() text."""
    parts = []
    for k, t in zip(keys, texts, strict=True):
        col = d.quote(k.name)
        parts.append(
            f"CASE WHEN {col} IS NULL THEN '|~' ELSE '|' || {d.byte_length(t)} || ':' || {t} END"
        )
    all_null = " AND ".join(f"{d.quote(k.name)} IS NULL" for k in keys)
    joined = "\n    || ".join(parts)
    return f"CASE WHEN {all_null} THEN NULL ELSE 'v1'\n    || {joined}\n  END"


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())
