"""Scheduled incremental syncs and date-range backfills as Prefect flows (the logic is the
core's: pipeline/nightly.py).

* `nightly_sync(settings, date)`: syncs the day before the flow run's scheduled start (in the
  sync's time zone), or `date`; catches up missed days, re-scans recent days for late files.
* `backfill_range(settings, start, end)`: days `start`..`end`, `settings.concurrency` at once.

Every day runs as a nested `moesif-backfill` flow run named after its job (its own summary
artifact); the run's per-day table is a table artifact. Both fail the flow run (with a message
saying what to do) when any day could not be delivered. See docs/nightly.md.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import threading
from typing import Any

from prefect import flow, tags
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import State
from prefect.states import Cancelled

from flows.backfill import (
    announce,
    artifact_key,
    backfill,
    core_logs_to_api,
    current_flow_run,
    flow_run_tags,
    parameter_job,
)
from flows.cancel import CANCELLED_MESSAGE
from pipeline.day_run import table_rows
from pipeline.day_settings import NightlySettings, RangeSettings
from pipeline.nightly import DaysOutcome, run_nightly, run_range
from pipeline.settings import RunSettings

DAY_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class _DayListener:
    """What a day's nested flow run gets of the CLI's listener: its Ctrl-C/SIGTERM event
    (`stop`), so the day stops taking chunks as a direct run does. The rows and the outcome
    stay with the parent flow run."""

    flow_run = "nested"  # `announce` names the parent flow run only

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def set_total(self, total: int | None) -> None:
        pass

    def rows_done(self, n: int) -> None:
        pass

    def finished(self, outcome: object, flow_run: object) -> None:
        pass


def _run_backfill(job: str, settings: RunSettings, stop: threading.Event | None = None) -> object:
    """One day's job (`<job>-YYYY-MM-DD`) as a nested `moesif-backfill` flow run named after
    it, tagged with its day (and the parent's job and mode tags: `run_days_flow`)."""
    day = job[-10:] if DAY_SUFFIX.search(job) else None
    listener = None if stop is None else _DayListener(stop)
    with tags(*([f"day:{day}"] if day else [])):
        return backfill.with_options(flow_run_name=job)(settings, listener=listener)


def _days_job(listener: Any) -> tuple[Any, threading.Event | None]:
    """The `RunJob` of a nightly/range flow run's days, and the CLI's stop event (None from a
    deployment)."""
    stop = getattr(listener, "stop", None)
    return functools.partial(_run_backfill, stop=stop), stop


def run_days_flow(
    command: str, settings: NightlySettings | RangeSettings, listener: Any, **when: Any
) -> Any:
    """The CLI's Prefect mode of `nightly` / `range`: the flow run named after the job and
    its day(s) (`<job> nightly <date or scheduled day>`, `<job> range <start>..<end>`), tagged
    job and mode; its final state."""
    job = settings.job
    with tags(*flow_run_tags(job, command)):
        if command == "nightly":
            assert isinstance(settings, NightlySettings)
            name = f"{job} nightly {when.get('date') or 'yesterday'}"
            return nightly_sync.with_options(flow_run_name=name)(
                settings, date=when.get("date"), listener=listener, return_state=True
            )
        assert isinstance(settings, RangeSettings)
        name = f"{job} range {when['start']}..{when['end']}"
        return backfill_range.with_options(flow_run_name=name)(
            settings, start=when["start"], end=when["end"], listener=listener, return_state=True
        )


def scheduled_start() -> dt.datetime:
    """The flow run's scheduled start time (now when not in a flow run), time-zone aware."""
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    when = flow_run.scheduled_start_time
    return dt.datetime.fromtimestamp(when.timestamp(), dt.UTC)


def _finish(
    what: str, job: str, outcome: DaysOutcome, listener: Any, stop: threading.Event | None
) -> dict[str, Any] | State[Any]:
    """Publish the per-day table, hand the outcome to the CLI's listener, fail on error (end
    Cancelled when Ctrl-C/SIGTERM stopped it)."""
    if outcome.result:
        create_table_artifact(
            table=table_rows(outcome.days),
            key=artifact_key(job, f"{what}-summary"),
            description=f"moesif-backfill {what} {job}: {outcome.result['status']}",
        )
    if listener is not None:
        listener.finished(outcome, current_flow_run())
    if outcome.error is not None and stop is not None and stop.is_set():
        return Cancelled(message=CANCELLED_MESSAGE)
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def _nightly_name() -> str:
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    return f"{parameter_job()} nightly {flow_run.parameters.get('date') or 'scheduled'}"


def _range_name() -> str:
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    p = flow_run.parameters
    return f"{parameter_job()} range {p.get('start')}..{p.get('end')}"


@flow(name="nightly-sync", log_prints=False, flow_run_name=_nightly_name)
def nightly_sync(
    settings: NightlySettings, date: str | None = None, listener: Any = None
) -> dict[str, Any] | State[Any]:
    """Sync yesterday (or `date`, YYYY-MM-DD) and catch up missed days; see docs/nightly.md.
    `listener` (the CLI's): `finished(outcome, flow_run)` receives the `DaysOutcome`."""
    announce(listener)
    run_day, stop = _days_job(listener)
    with core_logs_to_api():
        outcome = run_nightly(
            settings, run_day, date=date, scheduled_start=scheduled_start(), stop=stop
        )
    return _finish("nightly", settings.job, outcome, listener, stop)


@flow(name="backfill-range", log_prints=False, flow_run_name=_range_name)
def backfill_range(
    settings: RangeSettings, start: str, end: str, listener: Any = None
) -> dict[str, Any] | State[Any]:
    """Backfill the days start..end (YYYY-MM-DD, inclusive), `settings.concurrency` days at
    once; see docs/nightly.md. Does not move the nightly watermark."""
    announce(listener)
    run_day, stop = _days_job(listener)
    with core_logs_to_api():
        outcome = run_range(settings, run_day, start=start, end=end, stop=stop)
    return _finish("range", settings.job, outcome, listener, stop)


__all__ = ["backfill_range", "nightly_sync", "run_days_flow", "scheduled_start"]
