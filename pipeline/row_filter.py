"""Which rows of a chunk a run sends, by their mapped time: the run's time window
(RunSettings.window_start/_end: rows outside it are `outside`, never sent by this job) and
Moesif's 30-day window under --skip-older-than-30-days (rows before the cutoff are `too_old`:
not sent now, left pending in the checkpoint; a later run with --allow-older-than-30-days sends
exactly them: `only_before`). A row whose time is missing or unparseable is neither outside
nor too old: it goes on, and is rejected. Column-wise: the time column is parsed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.day_window import Window, outside_mask
from transforms.actions import time_bounds
from transforms.mapping import MappingSpec


@dataclass(frozen=True)
class RowSplit:
    """A chunk's rows split by time."""

    rows: int  # rows in the chunk
    picked: np.ndarray | None  # positions of the rows to build actions from; None: every row
    outside: int = 0  # outside the run's time window
    too_old: int = 0  # before the cutoff (--skip-older-than-30-days): deferred
    too_old_at: np.ndarray | None = None  # their positions (the ID ledger's too_old rows)

    @property
    def picked_count(self) -> int:
        return self.rows if self.picked is None else len(self.picked)


def _before(us: pa.Array, instant: int) -> np.ndarray:
    mask = pc.fill_null(pc.less(us, pa.scalar(instant, pa.int64())), False)
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def split_rows(
    batch: pa.RecordBatch,
    spec: MappingSpec,
    *,
    window: Window | None = None,
    too_old_before: int | None = None,
    only_before: int | None = None,
) -> RowSplit:
    """Split a logical batch (mapping column names): rows outside `window`; of the others,
    rows before `too_old_before` (too old: deferred); with `only_before` (the cutoff a chunk's
    rows were deferred with), only the rows before it are picked, the others not counted (an
    earlier run sent them)."""
    n = batch.num_rows
    if window is None and too_old_before is None and only_before is None:
        return RowSplit(n, None)
    us, _bad = time_bounds(batch.column(spec.time.column), spec)
    inside = np.ones(n, dtype=bool) if window is None else ~outside_mask(us, window)
    outside = n - int(inside.sum())
    keep = inside
    too_old = 0
    old = keep
    if only_before is not None:
        keep = inside & _before(us, only_before)
    elif too_old_before is not None:
        old = inside & _before(us, too_old_before)
        too_old = int(old.sum())
        keep = inside & ~old
    picked = None if keep.all() else np.flatnonzero(keep)
    old_at = np.flatnonzero(old) if too_old else None
    return RowSplit(n, picked, outside, too_old, old_at)


__all__ = ["RowSplit", "split_rows"]
