"""Moesif's 30-day window: rows older than 30 days (counted from the run's start) are refused
by the Collector unless the account is enabled for backfill.

`check_late_window` counts them before anything is sent and stops the run (PreflightError)
unless the user allowed them (--allow-older-than-30-days); `validate` only counts them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.s3_store import S3Store
from moesif_backfill.errors import ConfigError, PreflightError, SourceError
from pipeline.day_window import outside_mask, window_us
from pipeline.file_plan import FilePlan
from pipeline.settings import RunSettings
from transforms.actions import time_bounds
from transforms.mapping import MappingSpec

MOESIF_LATE_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class LateRows:
    """Rows older than Moesif's window among the files a run reads."""

    count: int = 0
    oldest_us: int | None = None


def check_late_window(
    settings: RunSettings,
    spec: MappingSpec,
    files: Sequence[FilePlan],
    *,
    complete: set[str],
    s3: S3Store | None = None,
    now: dt.datetime | None = None,
) -> LateRows:
    """Count rows older than Moesif's 30-day window; stop unless the user allowed them.
    Files in `complete` (delivered by an earlier run) are not read.

    With a time window (RunSettings.window_start/_end) only rows inside it count: the others
    are not sent by this run."""
    window = window_us(settings)
    if settings.allow_older_than_30_days and settings.mode != "validate":
        return LateRows()
    now = now or dt.datetime.now(dt.UTC)
    cutoff_us = int((now - MOESIF_LATE_WINDOW).timestamp() * 1_000_000)
    old, oldest = 0, None
    for fp in files:
        if fp.src.key in complete:
            continue
        time_col = fp.resolved.columns[spec.time.column]
        try:
            for batch in fp.batches([time_col], s3=s3):
                us, _bad = time_bounds(batch.column(0), spec)
                is_old = np.asarray(
                    pc.fill_null(pc.less(us, cutoff_us), False).to_numpy(zero_copy_only=False)
                )
                if window is not None:
                    is_old &= ~outside_mask(us, window)
                n_old = int(is_old.sum())
                if n_old:
                    old += n_old
                    low = pc.min(pc.filter(us, pa.array(is_old))).as_py()
                    oldest = low if oldest is None else min(oldest, low)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
    if old and not settings.allow_older_than_30_days and settings.mode != "validate":
        oldest_text = dt.datetime.fromtimestamp((oldest or 0) / 1e6, dt.UTC).isoformat()
        raise PreflightError(
            f"{old:,} row(s) are more than 30 days old (oldest: {oldest_text}). Moesif's "
            "Collector rejects events older than 30 days unless your Moesif account is enabled "
            "for backfill. Ask Moesif to enable historical import for your application, then "
            "rerun with --allow-older-than-30-days. Nothing was sent."
        )
    return LateRows(old, oldest)
