"""The `moesif-backfill` Prefect flow: preflight, one task per input file, a summary artifact
(or, with --workers/--dask-address, one task per shard on a Dask cluster: flows/dask_run.py).

The flow only wires small steps from `pipeline.run`; the logic stays plain Python. A file task is
retried by Prefect when delivery failed with a transient error (throttling, 5xx, dropped
connections beyond the sender's own retry budget); it resumes from the checkpoint, so a retry
re-sends at most the chunks that were in flight. Permanent errors fail the flow at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from moesif_backfill.errors import BackfillError, TransientDeliveryError
from pipeline.engine import ProgressListener
from pipeline.report import RunSummary
from pipeline.run import Run, on_dask
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
_listeners: list[ProgressListener] = []
LAST_SUMMARY: dict[str, Any] = {}  # the summary of the last run in this process (for the CLI)


def add_progress_listener(listener: ProgressListener) -> None:
    """Let the CLI (a terminal progress bar) follow the rows of the next run."""
    _listeners.append(listener)


def clear_progress_listeners() -> None:
    _listeners.clear()


class _Progress:
    """Fans row counts out to the listeners and keeps a Prefect progress artifact current."""

    def __init__(self, total: int | None, job: str) -> None:
        self.total = total
        self.done = 0
        self._last = 0.0
        self._lock = threading.Lock()
        for listener in _listeners:
            set_total = getattr(listener, "set_total", None)
            if set_total is not None:
                set_total(total)
        self.artifact_id: UUID = cast(
            UUID,
            create_progress_artifact(
                progress=0.0,
                key=artifact_key(job, "progress"),
                description=f"moesif-backfill job {job}: share of input rows accounted for",
            ),
        )

    def rows_done(self, n: int) -> None:
        for listener in _listeners:
            listener.rows_done(n)
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < ARTIFACT_EVERY_S or not self.total:
                return
            self._last = now
        update_progress_artifact(self.artifact_id, self.percent())

    def percent(self) -> float:
        if not self.total:
            return 100.0
        return round(min(100.0, 100.0 * self.done / self.total), 1)


def artifact_key(job: str, what: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for `what` of `job`."""
    safe = "".join(c if c.isalnum() else "-" for c in job.lower()).strip("-")
    return f"{safe[:60]}-{what}"


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TransientDeliveryError:
        return True
    except Exception:
        return False
    return False


# The retry policy of a task that sends: only TransientDeliveryError is retried (a blind retry
# of an unknown error could send twice).
RETRY_TRANSIENT: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [10, 60],
    "retry_condition_fn": _retry_transient,
}


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(run: Run) -> int:
    plan = run.prepare()
    logger = get_run_logger()
    logger.info(
        "job %s: %d file(s), mode %s, %s",
        plan.job,
        len(plan.files),
        run.settings.mode,
        f"~{plan.rows_estimate:,} rows" if plan.rows_estimate else "row count unknown",
    )
    return len(plan.files)


@task(name="process-file", task_run_name="file-{index}", cache_policy=NO_CACHE, **RETRY_TRANSIENT)
def process_file(run: Run, index: int) -> dict[str, int]:
    counts = run.process_file(index)
    return {
        "rows_read": counts.rows_read,
        "actions_sent": counts.actions_sent,
        "rows_rejected": counts.rows_rejected,
        "rows_skipped": counts.rows_skipped,
    }


@flow(name="moesif-backfill", log_prints=False)
def backfill(settings: RunSettings) -> dict[str, Any]:
    """Backfill the sources into Moesif through Firehose (or preview them with --dry-run).

    With `dask_address` or `workers` the shards run on a Dask cluster (flows/dask_run.py, a
    subflow); otherwise every file runs here, one task after the other."""
    if on_dask(settings):
        from flows.dask_run import run_on_dask  # noqa: PLC0415 - imports distributed

        return run_on_dask(settings)
    run = Run(settings)
    error: BaseException | None = None
    try:
        n_files = preflight(run)
        assert run.plan is not None
        progress = _Progress(run.plan.rows_estimate, run.plan.job)
        run.progress = progress
        for index in range(n_files):
            process_file(run, index)
    except BaseException as exc:
        error = exc
        raise
    finally:
        summary = publish_summary(run, error)
    return summary.to_dict()


def publish_summary(run: Run, error: BaseException | None) -> RunSummary:
    """Finish `run`: its summary for the CLI (LAST_SUMMARY), as an artifact and in the log."""
    summary = run.finish(error)
    LAST_SUMMARY.clear()
    LAST_SUMMARY.update(summary.to_dict())
    if isinstance(run.progress, _Progress) and error is None:
        update_progress_artifact(run.progress.artifact_id, 100.0)
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
    return summary
