"""Schema drift across the files of one run: one type per mapped column, or a clear error.

Exports written on different days rarely agree on every type. For each column the mapping reads,
`unify_types` computes the type all files are read as (each file's batches are cast to it, see
`connectors.layouts`), or raises a `MappingError` naming the file, the column and both types, at
preflight, before anything is sent.

Compatible changes (the widest type wins):

    int8 .. int64 (and unsigned that fit)   -> the widest integer (uint64 with signed: error)
    integer and floating point              -> float64 (a value beyond 2**53 that would change
                                               is a read error naming the row: never rounded)
    float16/32/64                           -> float64
    decimal(p1, s1), decimal(p2, s2)        -> decimal with max(s) fractional digits and
                                               max(p - s) integer digits (decimal256 past 38)
    integer and decimal                     -> that decimal, widened for the integer's digits
    timestamp units                         -> the finest unit; both naive or both with a
                                               zone (different zones -> UTC: same instants)
    date32/date64                           -> date32
    string/large_string, dictionary<string> -> string (binary likewise)
    null (a Parquet column with no type)    -> the other files' type

Declared and inferred types. Parquet columns and partition values have declared types: two
declared types that cannot be unified are an error. CSV and NDJSON types are inferred from the
first block of each file, so they are guesses:

  - an inferred type is widened with the declared ones (CSV float64 next to Parquet int64 ->
    float64), or is an error when it cannot be (a CSV timestamp next to a Parquet int64);
  - next to a declared string, an inferred column is read as text, exactly as written;
  - a column with no value in the block its type is inferred from (typed string) takes the other
    files' type (a later value that does not fit is a read error naming the row, as for any
    inferred type); one that holds text next to a declared non-string type is an error;
  - inferred types never conflict among themselves: when they cannot be unified the column is
    read as text, as written, in every text file;
  - number text (`FileColumns.number_text`: a text file's metadata column whose values are all
    JSON numbers, read as the digits written, see pipeline.binding) is typed by its own file: it
    stays numbers next to any number or string type of the other files, and never changes
    theirs; next to any other type (timestamp, date, boolean, nested) it is an error.

A column missing from some files is read as null there (`pipeline.binding` decides which
columns may be missing).

`as_is` columns (pipeline.binding passes those only string fields or metadata fields with a `type:`
read) are not unified: their values are sent as text (or the forced type) whatever each file's
type, so no cast is needed and no type conflicts.

Key columns (`transaction_id.key`) and the time column are never cast: the ID contract's canon()
gives the same text for int32 and int64, for decimal(10,2) and decimal(12,4) values, and for any
timestamp unit, and the time column accepts each of its types. A key whose kind changes (a
number in one file, a timestamp in another) is still an error: its IDs could not match.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from moesif_backfill.errors import MappingError

_UNITS = ("s", "ms", "us", "ns")
_INT_DIGITS = {8: 3, 16: 5, 32: 10, 64: 19}
_UINT_DIGITS = {8: 3, 16: 5, 32: 10, 64: 20}


@dataclass(frozen=True)
class FileColumns:
    """The mapped columns of one file: logical name -> type (None: the file lacks it)."""

    origin: str
    types: dict[str, pa.DataType | None]
    # Text formats (CSV, NDJSON): columns whose type was inferred from the first block.
    inferred: frozenset[str] = field(default_factory=frozenset)
    # CSV metadata columns inferred as floating point: read as the text of each number, exactly
    # as written, so they fit any number type of the other files (and are never cast).
    number_text: frozenset[str] = field(default_factory=frozenset)


def normalize(t: pa.DataType) -> pa.DataType:
    """The type a column is compared as: dictionaries decoded, large variants made regular."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both `a` and `b` convert to without changing a value, or None."""
    a, b = normalize(a), normalize(b)
    if a.equals(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _merge_ints(a, b)
    if _is_number(a) and _is_number(b) and (pa.types.is_floating(a) or pa.types.is_floating(b)):
        if pa.types.is_decimal(a) or pa.types.is_decimal(b):
            return None  # exact and inexact: no type keeps both
        return pa.float64()
    if pa.types.is_decimal(a) or pa.types.is_decimal(b):
        if _is_number(a) and _is_number(b):
            return _merge_decimals(_as_decimal(a), _as_decimal(b))
        return None
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        if (a.tz is None) != (b.tz is None):
            return None  # wall-clock times and instants
        unit = max(a.unit, b.unit, key=_UNITS.index)
        return pa.timestamp(unit, None if a.tz is None else (a.tz if a.tz == b.tz else "UTC"))
    if pa.types.is_date(a) and pa.types.is_date(b):
        return pa.date32()
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return pa.float64()
    return None


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(normalize(t)))


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _merge_ints(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    signed_a, signed_b = pa.types.is_signed_integer(a), pa.types.is_signed_integer(b)
    if signed_a == signed_b:
        return a if a.bit_width >= b.bit_width else b
    signed, unsigned = (a, b) if signed_a else (b, a)
    bits = max(signed.bit_width, 2 * unsigned.bit_width)
    return {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}.get(bits)


def _as_decimal(t: pa.DataType) -> tuple[int, int]:
    """(integer digits, scale) of a decimal or an integer type."""
    if pa.types.is_decimal(t):
        return max(t.precision - t.scale, 0), t.scale
    digits = _INT_DIGITS if pa.types.is_signed_integer(t) else _UINT_DIGITS
    return digits[t.bit_width], 0


def _merge_decimals(a: tuple[int, int], b: tuple[int, int]) -> pa.DataType | None:
    whole, scale = max(a[0], b[0]), max(a[1], b[1])
    precision = max(whole + scale, 1)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return None


def key_kind(t: pa.DataType) -> str:
    """What a key's canon() text looks like: numbers and strings can give the same text
    ("123"); timestamps, dates, booleans and binary UUIDs each give their own form."""
    t = normalize(t)
    if _is_number(t) or pa.types.is_string(t) or pa.types.is_null(t):
        return "number or text"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_boolean(t):
        return "boolean"
    return str(t)


@dataclass(frozen=True)
class Unified:
    """The result of `unify_types`."""

    types: dict[str, pa.DataType]  # column -> the type every file reads it as (cast to it)
    as_text: dict[int, frozenset[str]]  # file index -> inferred columns read as text instead


def unify_types(
    files: Sequence[FileColumns],
    *,
    keys: Collection[str],
    time_column: str,
    holds_only_nulls: Callable[[int, str], bool],
    as_is: Collection[str] = (),
) -> Unified:
    """One type per column across `files` (only columns some file has), except key columns,
    the time column and `as_is` columns (read as each file has them, never cast).

    Declared types (Parquet, partition values) must unify, else MappingError. Inferred types
    (CSV, NDJSON) follow the declared ones when they can: widened with them, read as text
    when the declared type is string, cast when the column only held nulls where its type was
    inferred (`holds_only_nulls(i, column)`, asked only then); else MappingError. Inferred
    types never conflict among themselves: when they cannot be unified, they are read as text
    (as written) in every file.
    """
    columns = list(dict.fromkeys(c for f in files for c in f.types))
    unified: dict[str, pa.DataType] = {}
    as_text: dict[int, set[str]] = {}
    for column in columns:
        if column in keys:
            _check_key(files, column)
            continue
        if column == time_column or column in as_is:
            continue
        merged, text_in = _unify_column(files, column, holds_only_nulls)
        if merged is not None:
            unified[column] = merged
        for i in text_in:
            as_text.setdefault(i, set()).add(column)
    return Unified(unified, {i: frozenset(c) for i, c in as_text.items()})


@dataclass
class _Kinds:
    """A column's types in the files that have it, by how they were determined."""

    declared: list[tuple[int, pa.DataType]] = field(default_factory=list)
    guessed: list[tuple[int, pa.DataType]] = field(default_factory=list)  # inferred, not string
    guessed_text: list[int] = field(default_factory=list)  # inferred string: text or no value
    numbers: list[int] = field(default_factory=list)  # CSV number text


def _kinds(files: Sequence[FileColumns], column: str) -> _Kinds:
    kinds = _Kinds()
    for i, f in enumerate(files):
        t = f.types.get(column)
        if t is None:
            continue
        if column in f.number_text:
            kinds.numbers.append(i)
        elif column not in f.inferred:
            kinds.declared.append((i, t))
        elif pa.types.is_string(normalize(t)):
            kinds.guessed_text.append(i)
        else:
            kinds.guessed.append((i, t))
    return kinds


def _unify_column(
    files: Sequence[FileColumns], column: str, holds_only_nulls: Callable[[int, str], bool]
) -> tuple[pa.DataType | None, set[int]]:
    kinds = _kinds(files, column)
    current: pa.DataType | None = None
    seen_in = ""
    for i, t in kinds.declared:
        merged = t if current is None else merge_types(current, t)
        if merged is None:
            assert current is not None
            raise _incompatible(files[i].origin, column, t, current, seen_in)
        if current is None or not normalize(merged).equals(normalize(current)):
            seen_in = files[i].origin
        current = merged
    fixed = current  # the declared type, if any: inferred types must fit it
    text_mode = fixed is not None and pa.types.is_string(normalize(fixed))

    def conflict(i: int, t: pa.DataType) -> None:
        nonlocal text_mode
        if fixed is not None and not pa.types.is_string(normalize(fixed)):
            raise _incompatible(files[i].origin, column, t, fixed, seen_in)
        text_mode = True  # inferred types that disagree: everything as written

    for i, t in kinds.guessed:
        merged = t if current is None else merge_types(current, t)
        if merged is None or text_mode:
            conflict(i, t)
        else:
            seen_in = seen_in or files[i].origin
            current = merged
    for i in kinds.numbers:  # typed by the file's own values: next to numbers or text, as is
        if current is not None and not (_is_number(current) or _is_text(current)):
            raise _incompatible(files[i].origin, column, "numbers", current, seen_in)
    for i in kinds.guessed_text:
        if not text_mode and current is not None and not holds_only_nulls(i, column):
            conflict(i, pa.string())
    if text_mode:
        return pa.string(), {i for i, _ in kinds.guessed}
    if current is None and kinds.guessed_text and not kinds.numbers:
        return pa.string(), set()
    # None: only number text (read as written in every file that has the column).
    return (None if current is None else normalize(current)), set()


def _check_key(files: Sequence[FileColumns], column: str) -> None:
    first: tuple[str, pa.DataType] | None = None
    for f in files:
        t = f.types.get(column)
        if t is None:
            continue
        if first is None:
            first = (f.origin, t)
        elif key_kind(t) != key_kind(first[1]):
            raise MappingError(
                f"{f.origin}: transaction_id key column {column!r} is {normalize(t)} here but "
                f"{normalize(first[1])} in {first[0]}; the two would never give the same "
                "transaction_id for the same row. Re-export the files with one type for the key."
            )


def _incompatible(
    origin: str, column: str, t: pa.DataType | str, other: pa.DataType, other_origin: str
) -> MappingError:
    here = t if isinstance(t, str) else normalize(t)
    return MappingError(
        f"{origin}: column {column!r} is {here} here but {normalize(other)} in "
        f"{other_origin}; the files' types cannot be unified (compatible changes are wider "
        "integers, integer to float, wider decimals and finer timestamp units). Re-export the "
        "files with one type for the column, or leave the file out."
    )
