"""JSON text fragments, column-wise: quoted strings and metadata values.

Strings are quoted with Arrow kernels; only the rare values that need escaping (quotes,
backslashes, control characters) go through `json.dumps`. Numbers keep their digits: decimals
are printed from their exact value, never through a float. Nested values (lists, structs, maps)
and binary take a per-value path, since they are rare in billing data.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.canon import canon_array, localize_value
from transforms.times import format_epoch, to_epoch_us

_NEEDS_ESCAPE = '[\\x00-\\x1f"\\\\]'
NULL_STRING = pa.scalar(None, pa.string())


def json_string(text: pa.Array) -> pa.Array:
    """A string column -> its JSON string literals (nulls stay null)."""
    needs = pc.match_substring_regex(text, pattern=_NEEDS_ESCAPE)
    quoted = pc.binary_join_element_wise('"', text, '"', "")
    if not pc.any(needs).as_py():
        return quoted
    mask = pc.fill_null(needs, False)
    escaped = [json.dumps(v, ensure_ascii=False) for v in pc.filter(text, mask).to_pylist()]
    return pc.replace_with_mask(quoted, mask, pa.array(escaped, pa.string()))


def json_constant(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def time_text(epoch_us: pa.Array) -> pa.Array:
    """Epoch microseconds -> "YYYY-MM-DDTHH:MM:SS.mmmZ" (milliseconds, truncated)."""
    ms = pc.divide(pc.subtract(epoch_us, pc.if_else(pc.less(epoch_us, 0), 999, 0)), 1000)
    return format_epoch(ms, unit="ms")


def string_field(arr: pa.Array, *, tz: str) -> pa.Array:
    """A source column for a string field (company_id, ...) -> JSON string literals.

    Non-string values are converted with canon(); NaN/Inf floats count as null.
    """
    text, _nonfinite = canon_array(arr, tz=tz)
    return json_string(text)


def metadata_value(arr: pa.Array, *, tz: str) -> tuple[pa.Array, int]:
    """A metadata column -> JSON value literals, and how many NaN/Inf values were omitted."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return json_string(arr.cast(pa.string())), 0
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return arr.cast(pa.string()), 0
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string()), 0
    if pa.types.is_floating(t):
        return _float_values(arr.cast(pa.float64()))
    if pa.types.is_decimal(t):
        return _decimal_values(arr, tz), 0
    if pa.types.is_timestamp(t):
        us, _bad = to_epoch_us(arr, tz=tz, unit=None)
        return json_string(time_text(us)), 0
    if pa.types.is_date(t):
        return json_string(arr.cast(pa.date32()).cast(pa.string())), 0
    return _per_value(arr, tz), 0


def _decimal_values(arr: pa.Array, tz: str) -> pa.Array:
    """Decimals as JSON numbers with their exact digits, in plain notation (Arrow prints
    negative scales and very small values with an exponent: those take the per-value path)."""
    if arr.type.scale < 0:
        return _per_value(arr, tz)
    text = arr.cast(pa.string())
    exp = pc.fill_null(pc.match_substring(text, "E"), False)
    if not pc.any(exp).as_py():
        return text
    fixed = [format(v, "f") for v in pc.filter(arr, exp).to_pylist()]
    return pc.replace_with_mask(text, exp, pa.array(fixed, pa.string()))


def _float_values(arr: pa.Array) -> tuple[pa.Array, int]:
    vals = np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    nonfinite = ~np.isfinite(vals) & np.asarray(
        arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool
    )
    text = arr.cast(pa.string())
    count = int(nonfinite.sum())
    if count:
        text = pc.if_else(pa.array(nonfinite), NULL_STRING, text)
    return text, count


def _per_value(arr: pa.Array, tz: str) -> pa.Array:
    encode = _python_encoder(tz)
    return pa.array([None if v is None else encode(v) for v in arr.to_pylist()], pa.string())


def _python_encoder(tz: str) -> Callable[[object], str]:
    """JSON for nested Python values: exact decimals, UTC times, base64 bytes, no NaN."""

    def enc(v: object) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else "null"
        if isinstance(v, decimal.Decimal):
            return format(v, "f") if v.is_finite() else "null"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, dt.datetime):
            aware = v if v.tzinfo is not None else localize_value(v, tz)
            utc = aware.astimezone(dt.UTC)
            return f'"{utc.strftime("%Y-%m-%dT%H:%M:%S")}.{utc.microsecond // 1000:03d}Z"'
        if isinstance(v, dt.date):
            return f'"{v.isoformat()}"'
        if isinstance(v, bytes):
            return json.dumps(base64.b64encode(v).decode("ascii"))
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(str(k))}:{enc(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            if all(isinstance(x, tuple) and len(x) == 2 for x in v) and v:  # map type
                return "{" + ",".join(f"{json.dumps(str(k))}:{enc(x)}" for k, x in v) + "}"
            return "[" + ",".join(enc(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)

    return enc
