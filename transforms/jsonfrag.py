"""JSON text fragments, column-wise: quoted strings and metadata values.

Strings are quoted with Arrow kernels; only the rare values that need escaping (quotes,
backslashes, control characters) go through `json.dumps`. Numbers keep their digits: decimals
are printed from their exact value, never through a float, and numbers of text sources read
as text (`number_text`) are sent with the digits they were written with. Nested values (lists,
structs, maps) and binary take a per-value path, since they are rare in billing data.

Values that have no JSON form are omitted and counted (`metadata_value`'s second result):
NaN/Inf floats, and timestamps whose UTC instant is outside years 1..9999 (e.g. the sentinel
9999-12-31T23:59:59 read in a zone west of UTC). Inside a nested value they become `null`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.canon import OutOfRange, canon_array, utc_text
from transforms.time_format import format_epoch
from transforms.times import localize_value, to_epoch_us

# A JSON number (RFC 8259). Text sources send a metadata value as a number only when it is
# written as one ("+1", ".5", "1.", "01.5", "inf" are not); connectors.readers has the same.
JSON_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
NULL_STRING = pa.scalar(None, pa.string())


_ESCAPE_BYTES = np.zeros(256, dtype=bool)
_ESCAPE_BYTES[:0x20] = True
_ESCAPE_BYTES[[ord('"'), ord("\\")]] = True


@dataclass(frozen=True)
class Quoted:
    """A string column already escaped for JSON, still without its quotes: whoever joins it
    into a record adds them in the same kernel call as the field name (one pass, not two)."""

    inner: pa.Array


def _rows_needing_escape(text: pa.Array) -> np.ndarray | None:
    """Rows holding a quote, a backslash or a control character, found by one scan over the
    column's data buffer (no per-value regex); None when there are none."""
    data = text.buffers()[2]
    if data is None or len(text) == 0:
        return None
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[
        text.offset : text.offset + len(text) + 1
    ]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
    hits = np.flatnonzero(_ESCAPE_BYTES[raw])
    if not len(hits):
        return None
    rows = np.searchsorted(offsets, hits + offsets[0], side="right") - 1
    mask = np.zeros(len(text), dtype=bool)
    mask[rows] = True
    if text.null_count:
        mask &= _np(text.is_valid())
    return mask if mask.any() else None


def json_inner(text: pa.Array) -> pa.Array:
    """A string column -> its JSON-escaped content, without the surrounding quotes."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if not pa.types.is_string(text.type):
        text = text.cast(pa.string())
    mask = _rows_needing_escape(text)
    if mask is None:
        return text
    escaped = [json.dumps(v, ensure_ascii=False)[1:-1] for v in text.filter(mask).to_pylist()]
    return pc.replace_with_mask(text, pa.array(mask), pa.array(escaped, pa.string()))


def json_string(text: pa.Array) -> pa.Array:
    """A string column -> its JSON string literals (nulls stay null)."""
    return pc.binary_join_element_wise('"', json_inner(text), '"', "")


def join_field(prefix: str, value: pa.Array | Quoted) -> pa.Array:
    """`prefix` + the value's JSON, per row; null where the value is null."""
    if isinstance(value, Quoted):
        return pc.binary_join_element_wise(prefix + '"', value.inner, '"', "")
    return pc.binary_join_element_wise(prefix, value, "")


def json_constant(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def time_text(epoch_us: pa.Array) -> pa.Array:
    """Epoch microseconds -> "YYYY-MM-DDTHH:MM:SS.mmmZ" (milliseconds, truncated)."""
    ms = pc.divide(pc.subtract(epoch_us, pc.if_else(pc.less(epoch_us, 0), 999, 0)), 1000)
    return format_epoch(ms, unit="ms")


def string_field(arr: pa.Array, *, tz: str) -> Quoted:
    """A source column for a string field (company_id, ...) -> JSON string content.

    Non-string values are converted with canon(); values without canonical text (NaN/Inf
    floats, timestamps outside years 1..9999 in UTC, naive times inside a DST gap) count as null.
    """
    text, _nonfinite = canon_array(arr, tz=tz)
    return Quoted(json_inner(text))


def metadata_value(
    arr: pa.Array, *, tz: str, number_text: bool = False
) -> tuple[pa.Array | Quoted, np.ndarray]:
    """A metadata column -> JSON value literals, and per row how many values without a JSON
    form (NaN/Inf, times outside years 1..9999 UTC) were omitted or, inside nested values, nulled.

    `number_text`: `arr` holds numbers as the text they were written as (a text source's
    column whose every value is a JSON number, see `pipeline.binding`); they become JSON
    numbers with exactly those digits.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    none = np.zeros(len(arr), dtype=np.int64)
    if number_text:
        return _number_text_values(arr.cast(pa.string())), none
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return Quoted(json_inner(arr.cast(pa.string()))), none
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return arr.cast(pa.string()), none
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string()), none
    if pa.types.is_floating(t):
        return _float_values(arr.cast(pa.float64()))
    if pa.types.is_decimal(t):
        return _decimal_values(arr, tz), none
    if pa.types.is_timestamp(t):
        us, out_of_range = to_epoch_us(arr, tz=tz, unit=None)
        return Quoted(time_text(us)), out_of_range.astype(np.int64)
    if pa.types.is_date(t):
        return Quoted(arr.cast(pa.date32()).cast(pa.string())), none
    return _per_value(arr, tz)


def typed_metadata_value(
    arr: pa.Array, kind: str, *, tz: str
) -> tuple[pa.Array | Quoted, np.ndarray, np.ndarray]:
    """A metadata column whose mapping forces the JSON type (`type: string|number`) -> (JSON
    literals, values omitted per row, rows whose value is not a number for `type: number`).

    `string`: text as it is; numbers and booleans as the text `metadata_value` gives them,
    quoted (12.50 -> "12.50", true -> "true"); times as `metadata_value`.
    `number`: text that is a JSON number (blanks around it dropped) is sent with its digits;
    other text is flagged (the row is rejected); number columns as `metadata_value`.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    fine = np.zeros(len(arr), dtype=bool)
    is_text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if kind == "number" and is_text:
        text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
        number = pc.match_substring_regex(text, pattern=JSON_NUMBER)
        bad = _np(pc.fill_null(pc.invert(number), False))
        if bad.any():
            text = pc.if_else(pa.array(bad), NULL_STRING, text)
        return text, np.zeros(len(arr), dtype=np.int64), bad
    value, omitted = metadata_value(arr, tz=tz)
    if kind == "string" and not isinstance(value, Quoted):
        value = Quoted(value)  # digits, true/false: nothing to escape
    return value, omitted, fine


def _number_text_values(text: pa.Array) -> pa.Array:
    """Numbers written as text -> JSON numbers with exactly the digits written ("1.50" stays
    1.50, "0.123456789012345678" is not rounded through a double); blanks around them are
    dropped. The readers let only JSON numbers into such a column; anything else (a file that
    changed under the reader) goes out as a JSON string, never as invalid JSON."""
    text = pc.utf8_trim_whitespace(text)
    odd = pc.fill_null(pc.invert(pc.match_substring_regex(text, pattern=JSON_NUMBER)), False)
    if not pc.any(odd).as_py():
        return text
    return pc.if_else(odd, json_string(text), text)


def _np(mask: pa.Array) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _decimal_values(arr: pa.Array, tz: str) -> pa.Array:
    """Decimals as JSON numbers with their exact digits, in plain notation (Arrow prints
    negative scales and very small values with an exponent: those take the per-value path)."""
    if arr.type.scale < 0:
        return _per_value(arr, tz)[0]
    text = arr.cast(pa.string())
    exp = pc.fill_null(pc.match_substring(text, "E"), False)
    if not pc.any(exp).as_py():
        return text
    fixed = [format(v, "f") for v in pc.filter(arr, exp).to_pylist()]
    return pc.replace_with_mask(text, exp, pa.array(fixed, pa.string()))


def _float_values(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    vals = np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    nonfinite = ~np.isfinite(vals) & _np(arr.is_valid())
    text = arr.cast(pa.string())
    if nonfinite.any():
        text = pc.if_else(pa.array(nonfinite), NULL_STRING, text)
    return text, nonfinite.astype(np.int64)


def _per_value(arr: pa.Array, tz: str) -> tuple[pa.Array, np.ndarray]:
    """Nested and unusual values through Python; returns the JSON texts and per row how many
    values without a JSON form were nulled (a row Arrow cannot even convert, e.g. a year-10000
    timestamp inside a struct, is omitted as a whole)."""
    omitted = np.zeros(len(arr), dtype=np.int64)
    try:
        values = arr.to_pylist()
    except (ValueError, OverflowError):  # a value outside Python's datetime range
        values = []
        for i in range(len(arr)):
            try:
                values.append(arr[i].as_py())
            except (ValueError, OverflowError):
                values.append(None)
                omitted[i] = 1
    texts: list[str | None] = []
    for i, v in enumerate(values):
        encoder = _PythonEncoder(tz)
        texts.append(None if v is None else encoder(v))
        omitted[i] += encoder.omitted
    return pa.array(texts, pa.string()), omitted


class _PythonEncoder:
    """JSON for nested Python values: exact decimals, UTC times, base64 bytes; values without
    a JSON form (NaN/Inf, times outside years 1..9999 UTC) become null and are counted."""

    def __init__(self, tz: str) -> None:
        self.tz = tz
        self.omitted = 0

    def _none(self) -> str:
        self.omitted += 1
        return "null"

    def _time(self, v: dt.datetime) -> str:
        try:
            aware = v if v.tzinfo is not None else localize_value(v, self.tz)
            return f'"{utc_text(aware, digits=3)}"'
        except (OverflowError, OutOfRange):
            return self._none()

    def __call__(self, v: object) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else self._none()
        if isinstance(v, decimal.Decimal):
            return format(v, "f") if v.is_finite() else self._none()
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, dt.datetime):
            return self._time(v)
        if isinstance(v, dt.date):
            return f'"{v.isoformat()}"'
        if isinstance(v, bytes):
            return json.dumps(base64.b64encode(v).decode("ascii"))
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(str(k))}:{self(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            if all(isinstance(x, tuple) and len(x) == 2 for x in v) and v:  # map type
                return "{" + ",".join(f"{json.dumps(str(k))}:{self(x)}" for k, x in v) + "}"
            return "[" + ",".join(self(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)
