"""Moesif's 30-day window: rows older than 30 days (counted from the run's start) are refused
by the Collector unless the account is enabled for backfill.

`check_late_window` counts them before anything is sent and stops the run (PreflightError)
unless the user allowed them (--allow-older-than-30-days) or asked to leave them pending
(--skip-older-than-30-days: the engine then sends only the rows at or after `cutoff_us`, and
commits each chunk with its older rows deferred, see connectors.checkpoint_state.FileProgress);
`validate` only counts them. Rows an earlier run left pending (`deferred`) count as old.
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
    cutoff_us: int = 0  # rows before this instant (epoch microseconds) are older than 30 days
    deferred: int = 0  # of `count`: rows earlier runs left pending (--skip-older-than-30-days)


def cutoff_us(now: dt.datetime | None = None) -> int:
    """The start of Moesif's window, 30 days before `now` (default: now), in epoch µs."""
    now = now or dt.datetime.now(dt.UTC)
    return int((now - MOESIF_LATE_WINDOW).timestamp() * 1_000_000)


def check_late_window(
    settings: RunSettings,
    spec: MappingSpec,
    files: Sequence[FilePlan],
    *,
    complete: set[str],
    s3: S3Store | None = None,
    now: dt.datetime | None = None,
    deferred: int = 0,
) -> LateRows:
    """Count rows older than Moesif's 30-day window; stop unless the user allowed them or asked
    to skip them. Files in `complete` (every chunk committed by an earlier run) are not read;
    `deferred`: rows of them earlier runs left pending as too old.

    With a time window (RunSettings.window_start/_end) only rows inside it count: the others
    are not sent by this run."""
    window = window_us(settings)
    cutoff = cutoff_us(now)
    counting = settings.mode == "validate" or not (
        settings.allow_older_than_30_days or settings.skip_older_than_30_days
    )
    if not counting:  # allowed: nothing to check; skipped: the engine counts them as it goes
        return LateRows(cutoff_us=cutoff, deferred=deferred)
    old, oldest = deferred, None
    for fp in files:
        if fp.src.key in complete:
            continue
        time_col = fp.resolved.columns[spec.time.column]
        try:
            for batch in fp.batches([time_col], s3=s3):
                us, _bad = time_bounds(batch.column(0), spec)
                is_old = np.asarray(
                    pc.fill_null(pc.less(us, cutoff), False).to_numpy(zero_copy_only=False)
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
    refuse = not (settings.allow_older_than_30_days or settings.skip_older_than_30_days)
    if old and refuse and settings.mode != "validate":
        raise PreflightError(refusal_message(old, oldest, deferred))
    return LateRows(old, oldest, cutoff, deferred)


def refusal_message(old: int, oldest: int | None, deferred: int, unit: str = "row") -> str:
    """Why a run stops before sending: `old` `unit`s (rows, actions) older than Moesif's
    30-day window (`deferred` of them left pending by an earlier run), and what to do."""
    oldest_text = (
        f" (oldest: {dt.datetime.fromtimestamp(oldest / 1e6, dt.UTC).isoformat()})"
        if oldest is not None
        else ""
    )
    pending = (
        f", {deferred:,} of them left pending by an earlier run with --skip-older-than-30-days"
        if deferred
        else ""
    )
    return (
        f"{old:,} {unit}(s) are more than 30 days old{oldest_text}{pending}. Moesif's Collector "
        "rejects events older than 30 days unless your Moesif account is enabled for "
        "backfill. Ask Moesif to enable historical import for your application, then rerun "
        "with --allow-older-than-30-days; or rerun with --skip-older-than-30-days to send the "
        f"newer {unit}s now and leave the older ones pending. Nothing was sent."
    )
