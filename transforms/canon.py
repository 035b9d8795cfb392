"""canon(): the canonical text of a value, per ID contract v1 (docs/transaction-id.md).

`canon_array` is the column-wise implementation used on the hot path; `canon_value` is a plain
Python reference implementation of the same contract, used by tests and documentation. The two
must agree on every value (a property test checks it).

    string    -> as is
    bool      -> "true" | "false"
    integer   -> decimal digits with optional "-"
    float     -> finite, integral and |v| < 2**53 -> canon(int(v)); other finite -> repr(v);
                 NaN/Inf -> no canonical text (the row is rejected when it is a key)
    decimal   -> plain notation, no exponent, trailing fractional zeros and a bare "." removed,
                 "-0" -> "0"
    timestamp -> UTC "YYYY-MM-DDTHH:MM:SS.ffffffZ" (naive -> the mapping's time zone;
                 a naive time inside a DST gap has none: the row is rejected when it is a key)
    date      -> "YYYY-MM-DD"
"""

from __future__ import annotations

import datetime as dt
import decimal
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moesif_backfill.errors import MappingError
from transforms.time_format import format_epoch
from transforms.times import (
    US_PER_UNIT,
    is_nonexistent,
    localize_value,
    timestamp_epoch_us,
    wall_text,
)

_TWO_53 = 2.0**53
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)


class NoCanonicalText(ValueError):
    """A value that has no canonical text (the row is rejected when it is a key)."""


class NonFinite(NoCanonicalText):
    """A float key value (NaN or infinity) has no canonical text."""


class OutOfRange(NoCanonicalText):
    """A timestamp whose UTC instant lies outside years 1..9999 has no canonical text."""


NONEXISTENT_REASON = (
    "nonexistent local time {value} in {zone} (DST gap): set the zone the source really used, "
    "e.g. a fixed offset"
)


class NonexistentLocalTime(NoCanonicalText):
    """A naive timestamp inside a DST gap of the mapping's time zone: no instant had that
    wall-clock time, so any instant chosen for it could give two rows one ID."""

    def __init__(self, naive: dt.datetime, tz: str) -> None:
        super().__init__(nonexistent_reason(naive, tz))


def nonexistent_reason(naive: dt.datetime, tz: str) -> str:
    """The reject reason of a key holding the naive time `naive` inside a DST gap of `tz`."""
    return NONEXISTENT_REASON.format(value=wall_text(naive), zone=tz)


def utc_text(aware: dt.datetime, *, digits: int = 6) -> str:
    """An aware datetime as UTC text `YYYY-MM-DDTHH:MM:SS.ffffffZ` with `digits` (6 or 3)
    fractional digits, truncated; OutOfRange when the UTC instant is outside years 1..9999.

    The year always has four digits (`strftime("%Y")` gives "1" for year 1 on Linux).
    """
    try:
        u = aware.astimezone(dt.UTC)
    except OverflowError as exc:
        raise OutOfRange(f"{aware.isoformat()} is outside years 1..9999 in UTC") from exc
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond:06d}"[: 20 + digits]
        + "Z"
    )


def canon_decimal_text(d: decimal.Decimal) -> str:
    if not d.is_finite():
        raise NonFinite(str(d))
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def canon_value(v: object, *, tz: str = "UTC") -> str:
    """Reference canon() for one Python value (from `pyarrow.Array.to_pylist()`)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise NonFinite(repr(v))
        if v.is_integer() and abs(v) < _TWO_53:
            return str(int(v))
        return repr(v)
    if isinstance(v, decimal.Decimal):
        return canon_decimal_text(v)
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            return utc_text(v)
        try:
            text = utc_text(localize_value(v, tz))
            gap = is_nonexistent(v, tz)
        except OverflowError as exc:
            raise OutOfRange(f"{v.isoformat()} in {tz} is outside years 1..9999 in UTC") from exc
        if gap:
            raise NonexistentLocalTime(v, tz)
        return text
    if isinstance(v, dt.date):
        return v.isoformat()
    raise TypeError(f"no canonical text for {type(v).__name__}")


def canon_array(arr: pa.Array, *, tz: str) -> tuple[pa.Array, np.ndarray]:
    """canon() over a column: a string array (nulls stay null) and a no-canonical-text mask.

    Values without canonical text (NaN/Inf floats; timestamps whose UTC instant is outside
    years 1..9999; naive timestamps inside a DST gap, see `nonexistent_times`) become null and
    are flagged in the mask.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    none = np.zeros(len(arr), dtype=bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string()), none
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string()), none
    if pa.types.is_date(t):  # "YYYY-MM-DD", not localized
        arr = arr.cast(pa.date32())
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_date(t):
        return arr.cast(pa.string()), none
    if pa.types.is_floating(t):
        return _canon_float(arr.cast(pa.float64()))
    if pa.types.is_decimal(t):
        return _canon_decimal(arr), none
    if pa.types.is_timestamp(t):
        us, out_of_range, gap = timestamp_epoch_us(arr, tz=tz)
        text = format_epoch(us, unit="us")
        if gap.any():
            text = pc.if_else(pa.array(~gap), text, pa.scalar(None, pa.string()))
        return text, out_of_range | gap
    raise MappingError(f"values of type {t} have no canonical text in ID contract v1")


def nonexistent_times(
    arr: pa.Array, flagged: np.ndarray, *, tz: str
) -> tuple[np.ndarray, list[str]]:
    """Among the rows `flagged` by `canon_array` for a timestamp column, those whose naive time
    lies inside a DST gap of `tz`: (row positions, the reject reason of each).

    Only the flagged rows are looked at again, so this costs nothing when none are flagged.
    """
    rows = np.flatnonzero(flagged)
    if not len(rows):
        return rows, []
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    subset = arr.take(pa.array(rows))
    _us, _out_of_range, gap = timestamp_epoch_us(subset, tz=tz)
    if not gap.any():
        return rows[:0], []
    wall = subset.filter(pa.array(gap)).cast(pa.int64()).to_pylist()
    factor = US_PER_UNIT[arr.type.unit]  # None: nanoseconds, floored like the instant
    walls = [v * factor if factor else v // 1000 for v in wall]
    return rows[gap], [
        nonexistent_reason(_NAIVE_EPOCH + dt.timedelta(microseconds=v), tz) for v in walls
    ]


def _canon_float(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    vals = np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    finite = np.isfinite(vals)
    nonfinite = valid & ~finite
    with np.errstate(invalid="ignore"):
        integral = finite & (vals == np.floor(vals)) & (np.abs(vals) < _TWO_53)
    ints = np.where(integral, vals, 0).astype(np.int64)
    out = pa.array(ints).cast(pa.string())
    other = valid & finite & ~integral
    if other.any():
        idx = np.flatnonzero(other)
        texts = pa.array([repr(float(x)) for x in vals[idx]], pa.string())
        full = np.zeros(len(arr), dtype=bool)
        full[idx] = True
        out = pc.replace_with_mask(out, pa.array(full), texts)
    keep = valid & finite
    if not keep.all():
        out = pc.if_else(pa.array(keep), out, pa.scalar(None, pa.string()))
    return out, nonfinite


def _canon_decimal(arr: pa.Array) -> pa.Array:
    if arr.type.scale < 0:  # Arrow prints these with an exponent: use the reference path
        return pa.array(
            [None if v is None else canon_decimal_text(v) for v in arr.to_pylist()], pa.string()
        )
    text = arr.cast(pa.string())
    if arr.type.scale == 0:
        return pc.replace_substring_regex(text, pattern=r"^-0$", replacement="0")
    # Arrow also switches to exponent notation when the adjusted exponent is below -6
    # (1E-7, 1.0E-7, 0E-8): those values take the reference path.
    exp = pc.fill_null(pc.match_substring(text, "E"), False)
    text = pc.replace_substring_regex(text, pattern=r"0+$", replacement="")
    text = pc.replace_substring_regex(text, pattern=r"\.$", replacement="")
    text = pc.replace_substring_regex(text, pattern=r"^-0$", replacement="0")
    if pc.any(exp).as_py():
        fixed = [canon_decimal_text(v) for v in pc.filter(arr, exp).to_pylist()]
        text = pc.replace_with_mask(text, exp, pa.array(fixed, pa.string()))
    return text
