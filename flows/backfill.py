"""The `moesif-backfill` Prefect flow: the core's `run_job` (pipeline/job.py) as a flow run, with
a progress artifact, a summary table artifact and a log line.

All the work, including retries of a file after transient errors (within the run's retry
budget), is the core's: the flow adds only what the Prefect UI shows. A failed run re-raises the
error that stopped it, so the flow run fails with the same message the CLI prints.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import State
from prefect.states import Cancelled

from moesif_backfill.errors import BackfillError, RunInterruptedError
from pipeline.job import JobOutcome, run_job
from pipeline.plan import default_job_name
from pipeline.report import RunSummary
from pipeline.settings import RunSettings

ARTIFACT_EVERY_S = 2.0


class _NoTracebackForExpectedErrors(logging.Filter):
    """Prefect logs every failed flow/task run with its traceback. For our own errors the
    message already says what went wrong and what to do; a traceback only buries it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BackfillError):
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_NoTracebackForExpectedErrors())


@dataclass(frozen=True)
class FlowRunRef:
    """The flow run a command ran as (for the CLI's "as Prefect flow run 'NAME', id ID")."""

    name: str
    id: str


def current_flow_run() -> FlowRunRef:
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    return FlowRunRef(name=str(flow_run.name), id=str(flow_run.id))


# The core's loggers: their INFO records go to a flow run's log in the Prefect API.
CORE_LOGGERS = ("pipeline", "connectors", "transforms")


@contextlib.contextmanager
def core_logs_to_api() -> Iterator[None]:
    """While a flow runs, the core's INFO logs (`pipeline.*`, `connectors.*`, `transforms.*`:
    plan, shards, each day's progress) go to the flow run's log in the Prefect API too
    (through PREFECT_LOGGING_EXTRA_LOGGERS, which the CLI sets, or a handler added here); the
    console keeps only warnings (the CLI's handler has its own level). Nested flow runs
    (nightly days) keep the levels until the outermost one ends."""
    from prefect.logging.handlers import APILogHandler  # noqa: PLC0415

    saved: list[tuple[logging.Logger, int, logging.Handler | None]] = []
    for name in CORE_LOGGERS:
        logger = logging.getLogger(name)
        handler: logging.Handler | None = None
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            handler = APILogHandler(level=logging.INFO)
            logger.addHandler(handler)
        saved.append((logger, logger.level, handler))
        logger.setLevel(min(logger.level or logging.WARNING, logging.INFO))
    try:
        yield
    finally:
        for logger, level, handler in saved:
            if handler is not None:
                logger.removeHandler(handler)
            logger.setLevel(level)


def flow_run_tags(job: str, mode: str, day: str | None = None) -> list[str]:
    """The tags of a flow run: its job and mode (send, dry-run, nightly, range), its day."""
    return [f"job:{job}", f"mode:{mode}", *([f"day:{day}"] if day else [])]


def announce(listener: Any) -> None:
    """Tell the CLI's listener which flow run this is, as soon as it starts (`flow_run`: after
    Ctrl-C/SIGTERM the CLI sets it Cancelled)."""
    if listener is not None and getattr(listener, "flow_run", True) is None:
        listener.flow_run = current_flow_run()


def artifact_key(job: str, what: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for `what` of `job`."""
    safe = "".join(c if c.isalnum() else "-" for c in job.lower()).strip("-")
    return f"{safe[:60]}-{what}"


class ProgressArtifact:
    """A progress listener keeping a Prefect progress artifact current (every 2 s at most)."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.total: int | None = None
        self.done = 0
        self.artifact_id: UUID | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def set_total(self, total: int | None) -> None:
        self.total = total
        self.artifact_id = cast(
            UUID,
            create_progress_artifact(
                progress=0.0,
                key=artifact_key(self.job, "progress"),
                description=f"moesif-backfill job {self.job}: share of input rows accounted for",
            ),
        )

    def rows_done(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.artifact_id is None or not self.total or now - self._last < ARTIFACT_EVERY_S:
                return
            self._last = now
        update_progress_artifact(self.artifact_id, self.percent())

    def percent(self) -> float:
        if not self.total:
            return 100.0
        return round(min(100.0, 100.0 * self.done / self.total), 1)

    def complete(self) -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0)


def parameter_job() -> str:
    """The job named by the running flow run's `settings` parameter (a settings model when
    called from Python, a dict from a deployment), or "moesif-backfill" without one."""
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    settings = flow_run.parameters.get("settings")
    job = settings.get("job") if isinstance(settings, dict) else getattr(settings, "job", None)
    return str(job or "moesif-backfill")


# Flow runs from deployments are named after their job too (the CLI names its own:
# `run_as_flow_run`, flows/nightly.py `run_days_flow`).
@flow(name="moesif-backfill", log_prints=False, flow_run_name=parameter_job)
def backfill(settings: RunSettings, listener: Any = None) -> dict[str, Any] | State[Any]:
    """Backfill the sources into Moesif through Firehose (or preview them with --dry-run).

    `listener` (the CLI's, not stored in the API): an object with `rows_done(n)` and
    `set_total(n)` following the rows, and `finished(outcome, flow_run)` receiving the
    `JobOutcome` and the `FlowRunRef` before the flow returns or fails."""
    artifact = ProgressArtifact(settings.job or default_job_name(settings))
    announce(listener)
    with core_logs_to_api():
        outcome = run_job(
            settings,
            progress=[artifact] if listener is None else [artifact, listener],
            stop=getattr(listener, "stop", None),
        )
    if outcome.ok:
        artifact.complete()
    publish_run_summary(outcome.summary)
    if listener is not None:
        listener.finished(outcome, current_flow_run())
    if isinstance(outcome.error, RunInterruptedError):  # Ctrl-C/SIGTERM: not a failure
        return Cancelled(message=str(outcome.error))
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary.to_dict()


def publish_run_summary(summary: RunSummary) -> None:
    """The run's summary as a table artifact and a log line."""
    create_table_artifact(
        table=summary.table_rows(),
        key=artifact_key(summary.job, "summary"),
        description=f"moesif-backfill job {summary.job}: {summary.status}",
    )
    get_run_logger().info(
        "job %s %s: read %d, sent %d, rejected %d, skipped %d in %.1fs",
        summary.job,
        summary.status,
        summary.rows_read,
        summary.actions_sent,
        summary.rows_rejected,
        summary.rows_skipped,
        summary.duration_s,
    )


def run_as_flow_run(settings: RunSettings, listener: Any) -> Any:
    """The CLI's Prefect mode: `backfill` as a flow run named after the job, tagged with the
    job and the mode; the outcome reaches `listener`. Its final state."""
    job = settings.job or default_job_name(settings)
    with tags(*flow_run_tags(job, settings.mode)):
        named = backfill.with_options(flow_run_name=job)
        return named(settings, listener=listener, return_state=True)


__all__ = [
    "FlowRunRef",
    "JobOutcome",
    "announce",
    "artifact_key",
    "backfill",
    "core_logs_to_api",
    "current_flow_run",
    "flow_run_tags",
    "parameter_job",
    "publish_run_summary",
    "run_as_flow_run",
]
