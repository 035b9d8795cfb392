"""Epoch values to ISO 8601 text, column-wise.

Formatting uses integer arithmetic in numpy (Howard Hinnant's days-to-civil algorithm) because
`pyarrow.compute.strftime` costs microseconds per value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


def _put(out: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    for k in range(width - 1, -1, -1):
        out[:, col + k] = _DIGITS[value % 10]
        value = value // 10


def format_epoch(epoch: pa.Array, *, unit: str) -> pa.Array:
    """int64 UTC epoch (`unit` "ms" or "us") -> "YYYY-MM-DDTHH:MM:SS.mmmZ" / ".ffffffZ" strings.

    Nulls stay null. Values must be within years 1..9999 (see `to_epoch_us`).
    """
    if isinstance(epoch, pa.ChunkedArray):
        epoch = epoch.combine_chunks()
    per_sec = 1000 if unit == "ms" else 1_000_000
    frac_w = 3 if unit == "ms" else 6
    width = 21 + frac_w
    n = len(epoch)
    vals = np.asarray(epoch.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    per_day = 86_400 * per_sec
    days = np.floor_divide(vals, per_day)
    rem = vals - days * per_day
    y, m, d = _civil(days)
    secs, frac = np.divmod(rem, per_sec)
    out = np.empty((n, width), dtype=np.uint8)
    _put(out, 0, y, 4)
    _put(out, 5, m, 2)
    _put(out, 8, d, 2)
    _put(out, 11, secs // 3600, 2)
    _put(out, 14, (secs // 60) % 60, 2)
    _put(out, 17, secs % 60, 2)
    _put(out, 20, frac, frac_w)
    out[:, 4] = out[:, 7] = ord("-")
    out[:, 10] = ord("T")
    out[:, 13] = out[:, 16] = ord(":")
    out[:, 19] = ord(".")
    out[:, width - 1] = ord("Z")
    return fixed_width_strings(out, validity=epoch.is_valid() if epoch.null_count else None)


def fixed_width_strings(rows: np.ndarray, *, validity: pa.Array | None = None) -> pa.Array:
    """An (n, width) uint8 matrix -> a string array of n values, without a Python loop."""
    n, width = rows.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    arr = pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(rows).tobytes())
    )
    if validity is not None:
        arr = pc.if_else(validity, arr, pa.scalar(None, pa.string()))
    return arr
