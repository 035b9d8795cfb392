"""The time window of a run (RunSettings.window_start/_end): which rows fall outside it.

Nightly syncs in time-window mode (`flows.nightly`, window="time") read every source file for
each day and send only the rows whose mapped time falls in [day 00:00, next day 00:00) in the
sync's time zone. Rows outside are neither sent nor rejected: the run counts them as
`rows_outside_window`, so the summary identity (pipeline/report.py) still holds.
A row whose time is missing or unparseable is never "outside": it is rejected as before.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.settings import RunSettings
from transforms.actions import time_bounds
from transforms.mapping import MappingSpec

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Window = tuple[int | None, int | None]  # [start, end) in UTC epoch microseconds; None: open


def window_us(settings: RunSettings) -> Window | None:
    """RunSettings.window_start/_end as epoch microseconds (None: the run has no window)."""
    start, end = settings.window_start, settings.window_end
    if start is None and end is None:
        return None

    def us(t: dt.datetime | None) -> int | None:
        return None if t is None else (t - _EPOCH) // dt.timedelta(microseconds=1)

    return us(start), us(end)


def outside_mask(us: pa.Array, window: Window) -> np.ndarray:
    """True where an epoch-microsecond time is outside `window`; null times are not outside."""
    start, end = window
    out = pa.array(np.zeros(len(us), dtype=bool))
    if start is not None:
        out = pc.or_(out, pc.less(us, pa.scalar(start, pa.int64())))
    if end is not None:
        out = pc.or_(out, pc.greater_equal(us, pa.scalar(end, pa.int64())))
    return np.asarray(pc.fill_null(out, False).to_numpy(zero_copy_only=False), dtype=bool)


def outside_window(batch: pa.RecordBatch, spec: MappingSpec, window: Window) -> np.ndarray:
    """Rows of a logical batch (mapping column names) whose time is outside `window`.

    Column-wise: the time column is parsed once for the whole batch.
    """
    us, _bad = time_bounds(batch.column(spec.time.column), spec)
    return outside_mask(us, window)


__all__ = ["Window", "outside_mask", "outside_window", "window_us"]
