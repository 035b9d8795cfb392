"""Nightly syncs and date-range backfills, one backfill job per day: plain Python, no Prefect.

* `run_nightly`: syncs the day before `scheduled_start` (in the sync's time zone), or `date`;
  catches up days missed since the watermark (at most `max_catch_up_days` per run), re-scans
  recently synced days for late files, and moves the watermark over consecutive completed days.
* `run_range`: days `start`..`end` with at most `concurrency` days at once (a thread pool);
  does not read or move the nightly watermark.

Each day runs through the `RunJob` the caller passes in: `direct_job` (the core's `run_job`)
from the CLI, a nested `moesif-backfill` flow run from the Prefect flows (flows/nightly.py).
The outcome is a return value: the result (the per-day table) and the error that failed the
run (a `DaysFailedError` naming the days and what to do), never a module global.
How it works and what to do on failure: docs/nightly.md.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.checkpoint import CheckpointStore
from moesif_backfill.errors import ConfigError, DaysFailedError
from pipeline.day_run import DayResult, RunJob, run_day, totals
from pipeline.day_settings import DaySettings, NightlySettings, RangeSettings
from pipeline.days import (
    DaySelection,
    advance_watermark,
    day_job,
    day_range,
    parse_day,
    select_days,
    span_text,
    target_day,
    zone,
)
from pipeline.nightly_state import Watermark, load_watermark, save_watermark, watermark_location
from pipeline.resources import checkpoint_store, open_aws
from pipeline.settings import RunSettings

if TYPE_CHECKING:
    from pipeline.engine import ProgressListener

log = logging.getLogger(__name__)

MAX_RANGE_DAYS = 3_660
INTERRUPTED = "not run: interrupted (Ctrl-C or SIGTERM) before it started; rerun to resume"


@dataclass(frozen=True)
class DaysOutcome:
    """What a nightly/range run ended with: its result (empty when it stopped before the first
    day), the day results, and the error that failed it (None: every day delivered)."""

    result: dict[str, Any] = field(default_factory=dict)
    days: tuple[DayResult, ...] = ()
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def direct_job(
    job: str,
    settings: RunSettings,
    *,
    progress: Sequence[ProgressListener] = (),
    stop: threading.Event | None = None,
) -> None:
    """The `RunJob` of direct runs: the core's `run_job`; raises the error that stopped it.
    `progress`: listeners of every day's rows; `stop`: the CLI's Ctrl-C/SIGTERM event (bind
    both with functools.partial)."""
    from pipeline.job import run_job  # noqa: PLC0415 - the engine loads with the first day

    outcome = run_job(settings, progress=progress, stop=stop)
    if outcome.error is not None:
        raise outcome.error


def _interrupted(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _store(settings: DaySettings) -> CheckpointStore:
    """The checkpoint store of the run (the same credentials as the day runs use); configures
    S3 access for the days' input checks."""
    return checkpoint_store(settings, open_aws(settings))


def _result(
    what: str, settings: DaySettings, results: Sequence[DayResult], **extra: Any
) -> dict[str, Any]:
    failed = [r for r in results if not r.ok]
    return {
        "flow": what,
        "job": settings.job,
        "status": "failed" if failed or extra.get("remaining_days") else "complete",
        **extra,
        "days": [r.to_dict() for r in results],
        "failed_days": [r.day.isoformat() for r in failed],
        "totals": totals(results),
    }


def _exit_code(failed: Sequence[DayResult]) -> int:
    return 2 if failed and all(r.config_error for r in failed) else 1


def _failed_lines(failed: Sequence[DayResult]) -> str:
    return "\n".join(f"  {r.day} ({r.job}): {r.error}" for r in failed)


# ---------------------------------------------------------------------------- nightly sync


def run_nightly(
    settings: NightlySettings,
    run_job: RunJob,
    *,
    date: str | None = None,
    scheduled_start: dt.datetime | None = None,
    stop: threading.Event | None = None,
) -> DaysOutcome:
    """Sync `date` (default: the day before `scheduled_start`, default now) and catch up.
    `stop` (the CLI's Ctrl-C/SIGTERM event): no day starts once it is set."""
    when = scheduled_start or dt.datetime.now(dt.UTC)
    try:
        return _nightly(settings, run_job, date, when, stop)
    except Exception as exc:
        return DaysOutcome(error=exc)


def _nightly(
    settings: NightlySettings,
    run_job: RunJob,
    date: str | None,
    scheduled_start: dt.datetime,
    stop: threading.Event | None,
) -> DaysOutcome:
    settings.check(allow_reset=False)
    job, timezone, window = settings.job, settings.timezone, settings.window
    target = parse_day(date) if date else target_day(scheduled_start, timezone)
    today = dt.datetime.now(zone(timezone)).date()
    if target >= today:
        raise ConfigError(
            f"day {target} has not ended yet in {timezone} (today is {today}): a nightly sync "
            "moves its watermark over whole days only; give a day before today"
        )
    store = _store(settings)
    where = watermark_location(store, job)
    workdir = Path(tempfile.mkdtemp(prefix="moesif-nightly-"))
    try:
        with store.lock(job):  # two nightly runs of one sync never overlap
            before = load_watermark(store, job)
            if before is not None:
                before.check_matches(timezone, window, where)
            watermark = before or Watermark.first(job, target, timezone, window)
            selection = select_days(
                target,
                start_day=before.start_day if before else None,
                last_synced=before.last_synced_day if before else None,
                max_catch_up_days=settings.max_catch_up_days,
                late_arrival_days=settings.late_arrival_days,
            )
            if before is None:
                save_watermark(store, watermark)  # a failing first day is retried next run
            log.info(
                "nightly %s: target %s, watermark %s; new days %s, re-scanned %s, left %s",
                job,
                target,
                watermark.last_synced_day,
                span_text(selection.new),
                span_text(selection.rescan),
                span_text(selection.remaining),
            )
            results, watermark = _nightly_days(
                settings, store, watermark, selection, workdir, run_job, stop
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    after = watermark.last_synced_day
    out = _result(
        "nightly",
        settings,
        results,
        target_day=target.isoformat(),
        watermark_before=(
            before.last_synced_day.isoformat() if before and before.last_synced_day else None
        ),
        watermark_after=after.isoformat() if after else None,
        remaining_days=[d.isoformat() for d in selection.remaining],
        watermark_location=where,
    )
    failed = [r for r in results if not r.ok]
    error = None
    if failed or selection.remaining:
        error = DaysFailedError(
            _nightly_message(settings, target, after, failed, selection),
            exit_code=_exit_code(failed),
        )
    else:
        log.info("nightly %s: complete, watermark %s", job, after)
    return DaysOutcome(out, tuple(results), error)


def _nightly_days(  # noqa: PLR0917 - the steps of one run, passed on
    settings: NightlySettings,
    store: CheckpointStore,
    watermark: Watermark,
    selection: DaySelection,
    workdir: Path,
    run_job: RunJob,
    interrupt: threading.Event | None,
) -> tuple[list[DayResult], Watermark]:
    """Run the selected days oldest first; save the watermark after each day that extends it."""
    results: list[DayResult] = []
    stop: DayResult | None = None
    completed: list[dt.date] = []
    for day, kind in selection.days():
        if stop is not None or _interrupted(interrupt):
            why = (
                INTERRUPTED
                if stop is None
                else f"not run: {stop.day} failed with {stop.error_type}; fix that and rerun"
            )
            results.append(DayResult(day, kind, day_job(settings.job, day), error=why))
            continue
        log.info("day %s (%s): starting", day, kind)
        result = run_day(settings, day, kind, workdir, run_job)
        results.append(result)
        log.info("day %s (%s): %s", day, kind, result.status)
        if result.stops_others:
            stop = result
        if result.ok and kind == "new":
            completed.append(day)
            last = advance_watermark(watermark.last_synced_day, watermark.start_day, completed)
            if last != watermark.last_synced_day:
                watermark = watermark.advanced(last)
                save_watermark(store, watermark)
    return results, watermark


def _nightly_message(
    settings: NightlySettings,
    target: dt.date,
    after: dt.date | None,
    failed: Sequence[DayResult],
    selection: DaySelection,
) -> str:
    parts = [f"nightly sync {settings.job} for {target}: watermark now {after or 'not set'}."]
    if failed:
        parts.append(
            f"{len(failed)} day(s) not delivered:\n{_failed_lines(failed)}\n"
            "Fix the cause and rerun (the next scheduled run retries them too); days and chunks "
            "already delivered are skipped, so a rerun never sends a row twice on purpose."
        )
    if selection.remaining:
        n = len(selection.new) + len(selection.remaining)
        parts.append(
            f"{len(selection.remaining)} missed day(s) not synced yet: "
            f"{span_text(selection.remaining)} (this run synced at most max_catch_up_days="
            f"{len(selection.new)}). The next runs catch up {len(selection.new)} day(s) each; "
            f"to catch up now, rerun with max_catch_up_days={n} (--max-catch-up-days {n}), or "
            f"deliver them faster with backfill-range --start {selection.remaining[0]} --end "
            f"{selection.remaining[-1]} first (the nightly run then finds them delivered)."
        )
    return "\n".join(parts)


# ---------------------------------------------------------------------------- date range


def run_range(
    settings: RangeSettings,
    run_job: RunJob,
    *,
    start: str,
    end: str,
    stop: threading.Event | None = None,
) -> DaysOutcome:
    """Backfill the days start..end (inclusive), `settings.concurrency` days at once. Does not
    move the nightly watermark. `stop` (the CLI's Ctrl-C/SIGTERM event): no day starts once
    it is set."""
    try:
        return _range(settings, run_job, start, end, stop)
    except Exception as exc:
        return DaysOutcome(error=exc)


def _range(
    settings: RangeSettings,
    run_job: RunJob,
    start: str,
    end: str,
    stop: threading.Event | None,
) -> DaysOutcome:
    settings.check(allow_reset=True)
    first, last = parse_day(start, "start"), parse_day(end, "end")
    days = day_range(first, last)
    if not days:
        raise ConfigError(f"end {last} is before start {first}; give start <= end")
    if len(days) > MAX_RANGE_DAYS:
        raise ConfigError(f"{len(days)} days is more than {MAX_RANGE_DAYS}; split the range")
    _store(settings)  # configures S3 access (and credentials) for the days' input checks
    workdir = Path(tempfile.mkdtemp(prefix="moesif-range-"))
    try:
        results = _range_days(settings, days, workdir, run_job, stop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ordered = [results[d] for d in days]
    out = _result("range", settings, ordered, start=first.isoformat(), end=last.isoformat())
    failed = [r for r in ordered if not r.ok]
    error = None
    if failed:
        error = DaysFailedError(
            f"backfill-range {settings.job} {first} .. {last}: {len(failed)} of {len(days)} "
            f"day(s) not delivered:\n{_failed_lines(failed)}\nFix the cause and rerun the same "
            "range (same job and parameters): days and chunks already delivered are skipped. "
            "This flow does not move a nightly sync's watermark.",
            exit_code=_exit_code(failed),
        )
    else:
        log.info("backfill-range %s %s .. %s: complete", settings.job, first, last)
    return DaysOutcome(out, tuple(ordered), error)


def _range_day(settings: RangeSettings, day: dt.date, workdir: Path, run_job: RunJob) -> DayResult:
    return run_day(settings, day, "range", workdir, run_job)


def _range_days(
    settings: RangeSettings,
    days: list[dt.date],
    workdir: Path,
    run_job: RunJob,
    stop: threading.Event | None,
) -> dict[dt.date, DayResult]:
    """Every day on a pool of `concurrency` threads, the next as soon as one finishes, until
    `stop` is set (the days left are not run). Each day runs in a copy of the caller's context
    (a Prefect flow run's day runs stay its nested flow runs)."""
    results: dict[dt.date, DayResult] = {}
    pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="day")
    finished = False
    try:
        pending = list(days)
        inflight: set[Future[DayResult]] = set()
        while pending or inflight:
            if _interrupted(stop):
                for day in pending:
                    job = day_job(settings.job, day)
                    results[day] = DayResult(day, "range", job, error=INTERRUPTED)
                pending = []
            while pending and len(inflight) < settings.concurrency:
                day = pending.pop(0)
                ctx = contextvars.copy_context()
                inflight.add(pool.submit(ctx.run, _range_day, settings, day, workdir, run_job))
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results[result.day] = result
                log.info("day %s: %s", result.day, result.status)
        finished = True
    finally:
        # interrupted: do not wait for the days in flight (their checkpoints hold what was
        # delivered); days not started yet are cancelled
        pool.shutdown(wait=finished, cancel_futures=True)
    return results


__all__ = ["DaysOutcome", "direct_job", "run_nightly", "run_range"]
