"""Scheduled incremental syncs and date-range backfills, one backfill job per day.

* `nightly_sync`: syncs the day before the flow run's scheduled start (in `timezone`), catches
  up days missed since the watermark (at most `max_catch_up_days` per run), re-scans recently
  synced days for late files, and moves the watermark over consecutive completed days.
* `backfill_range`: days `start`..`end` with at most `concurrency` days at once; does not read
  or move the nightly watermark.

Both fail the flow run (with a message saying what to do) when any day could not be delivered.
How it works and what to do on failure: docs/nightly.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from connectors.checkpoint import CheckpointStore
from flows.backfill import artifact_key, backfill
from moesif_backfill.errors import ConfigError, DaysFailedError
from pipeline.day_run import (
    DayConfig,
    DayResult,
    run_day,
    table_rows,
    totals,
)
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
from pipeline.run import checkpoint_store, open_aws
from pipeline.settings import RunSettings

MAX_RANGE_DAYS = 3_660
LAST_RESULT: dict[str, Any] = {}  # the result of the last nightly/range run in this process (CLI)


def _config(params: dict[str, Any]) -> DayConfig:
    """The days' DayConfig from a flow's parameters (its `locals()` on entry): `source` and
    `stream` as tuples, `options` as a dict, the other DayConfig fields by name; parameters
    that are not DayConfig's (date, start, concurrency, ...) are left out."""
    source, stream = params["source"], params["stream"]
    fields = {f.name for f in dataclasses.fields(DayConfig)} - {"sources", "streams", "options"}
    named = {k: v for k, v in params.items() if k in fields}
    return DayConfig(
        sources=(source,) if isinstance(source, str) else tuple(source),
        streams=tuple(stream or ()),
        options=dict(params["options"] or {}),
        **(named | {"mapping": str(params["mapping"])}),
    )


def _store(config: DayConfig) -> CheckpointStore:
    """The checkpoint store of the run (the same credentials as the day runs use)."""
    return checkpoint_store(config, open_aws(config))


def _run_backfill(job: str, settings: RunSettings) -> object:
    """One day's job as a nested `moesif-backfill` flow run named after it."""
    return backfill.with_options(flow_run_name=job)(settings)


def scheduled_start() -> dt.datetime:
    """The flow run's scheduled start time (now when not in a flow run), time-zone aware."""
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    when = flow_run.scheduled_start_time
    return dt.datetime.fromtimestamp(when.timestamp(), dt.UTC)


def _result(
    what: str, config: DayConfig, results: Sequence[DayResult], **extra: Any
) -> dict[str, Any]:
    failed = [r for r in results if not r.ok]
    status = "failed" if failed or extra.get("remaining_days") else "complete"
    out = {
        "flow": what,
        "job": config.job,
        "status": status,
        **extra,
        "days": [r.to_dict() for r in results],
        "failed_days": [r.day.isoformat() for r in failed],
        "totals": totals(results),
    }
    LAST_RESULT.clear()
    LAST_RESULT.update(out)
    create_table_artifact(
        table=table_rows(results),
        key=artifact_key(config.job, f"{what}-summary"),
        description=f"moesif-backfill {what} {config.job}: {status}",
    )
    return out


def _exit_code(failed: Sequence[DayResult]) -> int:
    return 2 if failed and all(r.config_error for r in failed) else 1


def _failed_lines(failed: Sequence[DayResult]) -> str:
    return "\n".join(f"  {r.day} ({r.job}): {r.error}" for r in failed)


# ---------------------------------------------------------------------------- nightly sync


def _run_nightly_days(
    config: DayConfig,
    store: CheckpointStore,
    watermark: Watermark,
    selection: DaySelection,
    workdir: Path,
) -> tuple[list[DayResult], Watermark]:
    """Run the selected days oldest first; save the watermark after each day that extends it."""
    logger = get_run_logger()
    results: list[DayResult] = []
    stop: DayResult | None = None
    completed: list[dt.date] = []
    for day, kind in selection.days():
        if stop is not None:
            results.append(
                DayResult(
                    day,
                    kind,
                    day_job(config.job, day),
                    error=f"not run: {stop.day} failed with {stop.error_type}; fix that and rerun",
                )
            )
            continue
        logger.info("day %s (%s): starting", day, kind)
        result = run_day(config, day, kind, workdir, _run_backfill)
        results.append(result)
        logger.info("day %s (%s): %s", day, kind, result.status)
        if result.stops_others:
            stop = result
        if result.ok and kind == "new":
            completed.append(day)
            last = advance_watermark(watermark.last_synced_day, watermark.start_day, completed)
            if last != watermark.last_synced_day:
                watermark = watermark.advanced(last)
                save_watermark(store, watermark)
    return results, watermark


@flow(name="nightly-sync", log_prints=False)
def nightly_sync(  # noqa: PLR0917 - the agreed deployment signature (docs/nightly.md)
    source: list[str],
    mapping: str,
    job: str,
    stream: list[str] | None = None,
    date: str | None = None,
    timezone: str = "UTC",
    window: Literal["path", "time"] = "path",
    max_catch_up_days: int = 7,
    late_arrival_days: int = 2,
    checkpoint: str = ".moesif-backfill/checkpoints",
    endpoint_url: str | None = None,
    region: str | None = None,
    s3_endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
    allow_older_than_30_days: bool = False,
    options: dict[str, Any] | None = None,
    allow_empty_days: bool = False,
) -> dict[str, Any]:
    """Sync yesterday (or `date`) and catch up missed days; see docs/nightly.md."""
    LAST_RESULT.clear()
    config = _config(locals())  # before any other local: locals() are the flow's parameters
    logger = get_run_logger()
    config.check(allow_reset=False)
    target = parse_day(date) if date else target_day(scheduled_start(), timezone)
    today = dt.datetime.now(zone(timezone)).date()
    if target >= today:
        raise ConfigError(
            f"day {target} has not ended yet in {timezone} (today is {today}): a nightly sync "
            "moves its watermark over whole days only; give a day before today"
        )
    store = _store(config)
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
                max_catch_up_days=max_catch_up_days,
                late_arrival_days=late_arrival_days,
            )
            if before is None:
                save_watermark(store, watermark)  # a failing first day is retried next run
            logger.info(
                "nightly %s: target %s, watermark %s; new days %s, re-scanned %s, left %s",
                job,
                target,
                watermark.last_synced_day,
                span_text(selection.new),
                span_text(selection.rescan),
                span_text(selection.remaining),
            )
            results, watermark = _run_nightly_days(config, store, watermark, selection, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    after = watermark.last_synced_day
    out = _result(
        "nightly",
        config,
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
    if failed or selection.remaining:
        raise DaysFailedError(
            _nightly_message(config, target, after, failed, selection), exit_code=_exit_code(failed)
        )
    logger.info("nightly %s: complete, watermark %s", job, after)
    return out


def _nightly_message(
    config: DayConfig,
    target: dt.date,
    after: dt.date | None,
    failed: Sequence[DayResult],
    selection: DaySelection,
) -> str:
    parts = [f"nightly sync {config.job} for {target}: watermark now {after or 'not set'}."]
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


@task(name="backfill-day", task_run_name="day-{day}", cache_policy=NO_CACHE)
def backfill_day(config: DayConfig, day: dt.date, workdir: Path) -> DayResult:
    return run_day(config, day, "range", workdir, _run_backfill)


@flow(name="backfill-range", log_prints=False)
def backfill_range(  # noqa: PLR0917 - the agreed deployment signature (docs/nightly.md)
    source: list[str],
    mapping: str,
    job: str,
    start: str,
    end: str,
    stream: list[str] | None = None,
    timezone: str = "UTC",
    window: Literal["path", "time"] = "path",
    concurrency: int = 2,
    checkpoint: str = ".moesif-backfill/checkpoints",
    endpoint_url: str | None = None,
    region: str | None = None,
    s3_endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
    allow_older_than_30_days: bool = False,
    options: dict[str, Any] | None = None,
    allow_empty_days: bool = False,
) -> dict[str, Any]:
    """Backfill the days start..end (inclusive), `concurrency` days at once; see
    docs/nightly.md. Does not move the nightly watermark."""
    LAST_RESULT.clear()
    config = _config(locals())  # before any other local: locals() are the flow's parameters
    logger = get_run_logger()
    config.check(allow_reset=True)
    first, last = parse_day(start, "start"), parse_day(end, "end")
    days = day_range(first, last)
    if not days:
        raise ConfigError(f"end {last} is before start {first}; give start <= end")
    if len(days) > MAX_RANGE_DAYS:
        raise ConfigError(f"{len(days)} days is more than {MAX_RANGE_DAYS}; split the range")
    if not 1 <= concurrency <= 32:
        raise ConfigError(f"concurrency must be 1..32 days at once, got {concurrency}")
    _store(config)  # checks the credentials and the checkpoint before any day starts
    workdir = Path(tempfile.mkdtemp(prefix="moesif-range-"))
    results: dict[dt.date, DayResult] = {}
    try:
        # One task per day on the flow's thread-pool task runner; at most `concurrency` are
        # submitted at a time, the next as soon as one finishes.
        pending = list(days)
        inflight: list[PrefectFuture[DayResult]] = []
        while pending or inflight:
            while pending and len(inflight) < concurrency:
                inflight.append(backfill_day.submit(config, pending.pop(0), workdir))
            done = next(iter(as_completed(inflight)))
            inflight.remove(done)
            result = done.result()
            results[result.day] = result
            logger.info("day %s: %s", result.day, result.status)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ordered = [results[d] for d in days]
    out = _result("range", config, ordered, start=first.isoformat(), end=last.isoformat())
    failed = [r for r in ordered if not r.ok]
    if failed:
        raise DaysFailedError(
            f"backfill-range {config.job} {first} .. {last}: {len(failed)} of {len(days)} day(s) "
            f"not delivered:\n{_failed_lines(failed)}\nFix the cause and rerun the same range "
            "(same job and parameters): days and chunks already delivered are skipped. This "
            "flow does not move a nightly sync's watermark.",
            exit_code=_exit_code(failed),
        )
    logger.info("backfill-range %s %s .. %s: complete", config.job, first, last)
    return out


__all__ = ["LAST_RESULT", "backfill_range", "nightly_sync", "scheduled_start"]
