"""Time columns to UTC epoch microseconds, column-wise (the way back: `transforms.time_format`).

Naive wall-clock times are placed in the mapping's IANA time zone with Arrow's
``assume_timezone``: an ambiguous time (the repeated hour when DST ends) takes the earlier
instant; a time that does not exist (the skipped hour when DST starts) is read with the UTC
offset in force before the gap (PEP 495 ``fold=0``: 02:20 in New York on a spring-forward day
is 07:20Z), and is flagged, since it has no canonical text for a transaction_id key (ID
contract v1). The fast path and the per-value fallback share that one rule.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import zoneinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}  # ns: divide by 1000 (floor)
MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_LATE_WALL_US = 2_143_238_400_000_000  # 2037-12-01T00:00:00 (wall clock)

# A valid UTC offset: hours 00-23, minutes 00-59. Arrow's parser takes "+05:60" as +06:00 and
# Python's takes "+05:99" as +06:39, so strings with any other offset go to the slow path, which
# rejects them (see `_valid_offset`).
_OFFSET_RE = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)$"
_PY_OFFSET = re.compile(r"[+-]\d{2}(?::?(\d{2})(?::?(\d{2})(?:\.\d+)?)?)?$")
_FRACTION = re.compile(r"(\.\d{6})\d+")
# Snowflake's default output "2024-03-01 04:45:42.914 +0000" has a blank before the offset,
# which neither Arrow's nor Python's parser accepts: it is removed before parsing (the offset
# is then checked like any other).
_BLANK_OFFSET = r"(:\d{2}(?:\.\d+)?)\s+([+-]\d{2}(?::?\d{2})?)$"
_BLANK_OFFSET_RE = re.compile(_BLANK_OFFSET)
# An epoch written as text (with `unit:`): a decimal number, optionally with an exponent.
_EPOCH_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_EPOCH_INT = r"^-?[0-9]{1,18}$"  # fits int64 whatever it is


def localize_value(naive: dt.datetime, tz: str) -> dt.datetime:
    """Place a wall-clock time in `tz` (PEP 495 ``fold=0``): ambiguous -> the earlier instant;
    inside a DST gap -> the offset in force before the gap (the rule of `_localize`)."""
    return naive.replace(tzinfo=zoneinfo.ZoneInfo(tz), fold=0)


def is_nonexistent(naive: dt.datetime, tz: str) -> bool:
    """True when no instant had the wall-clock time `naive` in `tz` (a DST gap).

    OverflowError when the instant is outside Python's datetime range."""
    zone = zoneinfo.ZoneInfo(tz)
    back = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC).astimezone(zone)
    return back.replace(tzinfo=None) != naive.replace(fold=0)


def wall_text(naive: dt.datetime) -> str:
    """A wall-clock time for messages: "2026-03-08 02:20", seconds and fractions when set."""
    if naive.second == 0 and naive.microsecond == 0:
        return naive.isoformat(sep=" ", timespec="minutes")
    return naive.isoformat(sep=" ")


def _localize(naive_us: pa.Array, tz: str) -> tuple[pa.Array, np.ndarray]:
    """Naive wall-clock microseconds (as timestamp[us]) -> (UTC epoch microseconds (int64),
    mask of the values inside a DST gap)."""
    wall = naive_us.cast(pa.int64())
    if tz == "UTC":
        return wall, np.zeros(len(naive_us), dtype=bool)
    try:  # the common case, a batch without a gap time: one kernel
        aware = pc.assume_timezone(naive_us, timezone=tz, ambiguous="earliest", nonexistent="raise")
        out = aware.cast(pa.int64())
        gap = np.zeros(len(naive_us), dtype=bool)
    except pa.ArrowInvalid:
        aware = pc.assume_timezone(
            naive_us, timezone=tz, ambiguous="earliest", nonexistent="earliest"
        )
        # In a gap, "earliest" is the last instant before it, whose wall time is not the
        # value's; that instant's offset (its wall time minus itself) is the one in force
        # before the gap. Elsewhere the wall time round-trips and the sum is the instant.
        instant = aware.cast(pa.int64())
        back = pc.local_timestamp(aware).cast(pa.int64())
        gap = _np_true(pc.not_equal(back, wall))
        out = pc.add(pc.subtract(wall, back), instant)
    # Arrow's tz library reads only the explicit transitions of the TZif file (they end in 2037)
    # and ignores its POSIX rule for later years (2038-07-01 New York came out as EST): late
    # wall-clock times go through zoneinfo, with the same ambiguous/nonexistent rule.
    late = pc.fill_null(pc.greater_equal(wall, _LATE_WALL_US), False)
    if pc.any(late).as_py():
        fixed, late_gap = [], []
        for v in pc.filter(wall, late).to_pylist():
            naive = _NAIVE_EPOCH + dt.timedelta(microseconds=v)
            try:
                aware_dt = localize_value(naive, tz)
                fixed.append((aware_dt - _EPOCH) // dt.timedelta(microseconds=1))
                late_gap.append(is_nonexistent(naive, tz))
            except OverflowError:
                fixed.append(MAX_US + 1)  # flagged by _range_checked
                late_gap.append(False)
        out = pc.replace_with_mask(out, late, pa.array(fixed, pa.int64()))
        gap[_np_true(late)] = late_gap
    return out, gap


def _np_true(mask: pa.Array) -> np.ndarray:
    """A boolean Arrow array as a writable numpy mask; null counts as False."""
    return np.array(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _to_us(values: pa.Array, unit: str) -> tuple[pa.Array, np.ndarray]:
    """int64 epoch values in `unit` -> (int64 microseconds, out-of-range mask).

    Sub-microsecond parts are floored; values outside years 1..9999 become null and flagged.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    raw = np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    nulls = _null_mask(values)
    factor = US_PER_UNIT[unit]
    if factor is None:
        us = np.floor_divide(raw, 1000)
        bad = np.zeros(len(raw), dtype=bool)
    else:
        bad = (raw < MIN_US // factor) | (raw > MAX_US // factor)
        us = np.where(bad, 0, raw) * factor
    bad |= (us < MIN_US) | (us > MAX_US)
    if nulls is not None:
        bad &= ~nulls
    mask = bad if nulls is None else (bad | nulls)
    return pa.array(us, type=pa.int64(), mask=mask if mask.any() else None), bad


def _null_mask(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def to_epoch_us(arr: pa.Array, *, tz: str, unit: str | None) -> tuple[pa.Array, np.ndarray]:
    """Convert a time column to int64 UTC epoch microseconds.

    Returns ``(epoch_us, unparseable)``: nulls in the input stay null; values that cannot be
    read as a time become null and are flagged in the boolean `unparseable` mask.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    n = len(arr)
    no_bad = np.zeros(n, dtype=bool)
    if pa.types.is_null(t):
        return pa.nulls(n, pa.int64()), no_bad
    if pa.types.is_timestamp(t):
        us, bad, _gap = timestamp_epoch_us(arr, tz=tz)
        return us, bad
    if pa.types.is_date(t):  # midnight in `tz` (inside a gap: the offset before it)
        days = arr.cast(pa.date32()).cast(pa.int32()).cast(pa.int64())
        naive = pc.multiply(days, pa.scalar(86_400_000_000, pa.int64()))
        return _range_checked(_localize(naive.cast(pa.timestamp("us")), tz)[0])
    if pa.types.is_integer(t):
        return _to_us(arr.cast(pa.int64()), unit or "s")
    if pa.types.is_floating(t):
        return _from_float_epoch(arr, unit or "s")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = arr.cast(pa.string())
        if unit is not None:
            return _parse_epoch_or_iso(text, tz, unit)
        return _parse_strings(text, tz)
    raise TypeError(f"unsupported time column type {t}")


def timestamp_epoch_us(arr: pa.Array, *, tz: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """A timestamp column -> ``(epoch_us, out_of_range, nonexistent)``.

    `out_of_range` flags values outside years 1..9999 in UTC (null in `epoch_us`);
    `nonexistent` flags naive values inside a DST gap of `tz`, which `epoch_us` holds read with
    the offset in force before the gap (see the module docstring).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    us, bad = _to_us(arr.cast(pa.int64()), t.unit)
    if t.tz is not None:
        return us, bad, np.zeros(len(arr), dtype=bool)
    local, gap = _localize(us.cast(pa.timestamp("us")), tz)
    local, bad2 = _range_checked(local)
    return local, bad | bad2, gap & ~bad2


def _parse_epoch_or_iso(s: pa.Array, tz: str, unit: str) -> tuple[pa.Array, np.ndarray]:
    """Text with an epoch `unit`: numbers written as text ("1700000000", "1700000000.5",
    "1.7e9") are epochs in that unit, exact to the microsecond (floored, never through a
    double); other text is parsed as an ISO 8601 time."""
    s = pc.utf8_trim_whitespace(s)
    numeric = pc.fill_null(pc.match_substring_regex(s, pattern=_EPOCH_TEXT), False)
    n_numeric = pc.sum(numeric).as_py() or 0
    if n_numeric == 0:
        return _parse_strings(s, tz)
    integral = pc.fill_null(pc.match_substring_regex(s, pattern=_EPOCH_INT), False)
    if pc.sum(integral).as_py() == len(s) - s.null_count:  # the usual case: whole numbers
        return _to_us(s.cast(pa.int64()), unit)
    n = len(s)
    us = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    is_num = np.asarray(numeric.to_numpy(zero_copy_only=False), dtype=bool)
    factor = US_PER_UNIT[unit]
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        for i, text in zip(np.flatnonzero(is_num), pc.filter(s, numeric).to_pylist(), strict=True):
            value = decimal.Decimal(text)
            if value.adjusted() > 25:  # far outside years 1..9999 in any unit
                bad[i] = True
                continue
            micros = value / 1000 if factor is None else value * factor
            floored = int(micros.to_integral_value(rounding=decimal.ROUND_FLOOR))
            if MIN_US <= floored <= MAX_US:
                us[i], ok[i] = floored, True
            else:
                bad[i] = True
    if n_numeric < len(s) - s.null_count:  # ISO text among the numbers
        iso, iso_bad = _parse_strings(pc.if_else(numeric, pa.scalar(None, pa.string()), s), tz)
        got = np.asarray(iso.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        us = np.where(got, np.asarray(iso.fill_null(0).to_numpy(zero_copy_only=False)), us)
        ok |= got
        bad |= iso_bad
    return pa.array(us, pa.int64(), mask=~ok), bad


def _from_float_epoch(arr: pa.Array, unit: str) -> tuple[pa.Array, np.ndarray]:
    vals = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    nulls = _null_mask(arr)
    valid = np.ones(len(arr), dtype=bool) if nulls is None else ~nulls
    scale = 1e-3 if unit == "ns" else float(US_PER_UNIT[unit] or 1)
    with np.errstate(invalid="ignore", over="ignore"):
        us = np.floor(vals * scale)
        bad = valid & (~np.isfinite(us) | (us < MIN_US) | (us > MAX_US))
        us = np.where(valid & ~bad, us, 0).astype(np.int64)
    return pa.array(us, mask=~valid | bad), bad


def _range_checked(us: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Null out (and flag) values outside years 1..9999, which ISO 8601 text cannot show."""
    if isinstance(us, pa.ChunkedArray):
        us = us.combine_chunks()
    out_of_range = pc.or_(pc.less(us, MIN_US), pc.greater(us, MAX_US))
    if not pc.any(out_of_range).as_py():
        return us, np.zeros(len(us), dtype=bool)
    bad = np.asarray(pc.fill_null(out_of_range, False).to_numpy(zero_copy_only=False), dtype=bool)
    return pc.if_else(out_of_range, pa.scalar(None, pa.int64()), us), bad


def _parse_strings(s: pa.Array, tz: str) -> tuple[pa.Array, np.ndarray]:
    s = pc.utf8_trim_whitespace(s)
    if len(s) > s.null_count and pc.all(pc.ends_with(s, "Z")).as_py():
        try:  # the usual export form, "...Z" everywhere: no offset to check, no regex pass
            return _to_us(s.cast(pa.timestamp("ns", "UTC")).cast(pa.int64()), "ns")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    s = pc.replace_substring_regex(s, pattern=r" ?UTC$", replacement="Z")
    s = pc.replace_substring_regex(s, pattern=_BLANK_OFFSET, replacement=r"\1\2")
    has_offset = pc.match_substring_regex(s, pattern=_OFFSET_RE)
    n_valid = len(s) - s.null_count
    n_offset = pc.sum(has_offset).as_py() or 0
    try:
        if n_offset == n_valid:
            parsed = s.cast(pa.timestamp("ns", "UTC"))
            return _to_us(parsed.cast(pa.int64()), "ns")
        if n_offset == 0:
            parsed = s.cast(pa.timestamp("ns"))
            us, _ = _to_us(parsed.cast(pa.int64()), "ns")
            return _range_checked(_localize(us.cast(pa.timestamp("us")), tz)[0])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return _parse_strings_slow(s, tz)


def parse_iso_value(text: str) -> tuple[int, bool] | None:
    """One ISO 8601 string -> (epoch_us, is_naive); naive values are wall-clock microseconds."""
    t = _BLANK_OFFSET_RE.sub(r"\1\2", _FRACTION.sub(r"\1", text.strip()))
    if t.endswith(("z", "Z")):
        t = t[:-1] + "+00:00"
    try:
        value = dt.datetime.fromisoformat(t)
    except ValueError:
        return None
    naive = value.tzinfo is None
    if not naive and not _valid_offset(t):
        return None
    anchored = value.replace(tzinfo=dt.UTC) if naive else value
    return (anchored - _EPOCH) // dt.timedelta(microseconds=1), naive


def _valid_offset(text: str) -> bool:
    """False for an offset whose minutes or seconds are 60 or more ("+05:60", "+05:99"), which
    `datetime.fromisoformat` silently carries over into the hours."""
    m = _PY_OFFSET.search(text)
    return m is None or all(int(part) < 60 for part in m.groups() if part is not None)


def _parse_strings_slow(s: pa.Array, tz: str) -> tuple[pa.Array, np.ndarray]:
    """Per-value fallback for mixed, unusual or broken strings (the rare path)."""
    n = len(s)
    aware = np.zeros(n, dtype=np.int64)
    naive = np.zeros(n, dtype=np.int64)
    is_naive = np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    for i, text in enumerate(s.to_pylist()):
        if text is None:
            continue
        parsed = parse_iso_value(text)
        if parsed is None:
            bad[i] = True
            continue
        value, was_naive = parsed
        ok[i] = True
        if was_naive:
            is_naive[i] = True
            naive[i] = value
        else:
            aware[i] = value
    if is_naive.any():
        localized = _localize(pa.array(naive, pa.timestamp("us")), tz)[0].to_numpy()
        aware = np.where(is_naive, localized, aware)
    us, out_of_range = _range_checked(pa.array(aware, mask=~ok))
    return us, bad | out_of_range
