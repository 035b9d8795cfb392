"""`redrive-failed-deliveries`: the core's `run_redrive` (pipeline/redrive.py) as a Prefect flow
run, so that a scheduled redrive of Firehose's failed deliveries has a state to alert on.

The flow adds only what the Prefect UI shows: the run's name (`<job> redrive`), its tags
(`job:<job>`, `mode:redrive`), the summary as a table artifact (`<job>-redrive-summary`) and a
log line. A run that returned an error re-raises it, so the flow run fails with the message the
CLI prints; rejected lines or actions leave it Completed with a warning (as `run`'s flow does).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from connectors.failed_delivery import error_location
from flows.backfill import artifact_key, core_logs_to_api, flow_run_tags
from moesif_backfill.errors import ConfigError
from pipeline.redrive import run_redrive
from pipeline.redrive_report import RedriveSummary
from pipeline.redrive_settings import RedriveSettings, default_redrive_job


def redrive_job(settings: RedriveSettings | dict[str, Any]) -> str:
    """The job a redrive's settings name: `job`, or the core's default from the location."""
    get = settings.get if isinstance(settings, dict) else lambda k: getattr(settings, k, None)
    job, location = get("job"), get("location")
    if job:
        return str(job)
    try:
        return default_redrive_job(error_location(str(location or "")).url)
    except ConfigError:
        return "redrive"


def _redrive_name() -> str:
    from prefect.runtime import flow_run  # noqa: PLC0415 - resolved at call time

    return f"{redrive_job(flow_run.parameters.get('settings') or {})} redrive"


def _tag_flow_run(job: str) -> None:
    """Add `job:<job>` and `mode:redrive` to this flow run's tags (a deployment's runs too)."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.runtime import flow_run  # noqa: PLC0415

    wanted = flow_run_tags(job, "redrive")
    current = list(flow_run.tags or [])
    with get_client(sync_client=True) as client:
        client.update_flow_run(
            flow_run.id, tags=[*current, *(t for t in wanted if t not in current)]
        )


@flow(name="redrive-failed-deliveries", log_prints=False, flow_run_name=_redrive_name)
def redrive_failed_deliveries(settings: RedriveSettings) -> dict[str, Any]:
    """Re-send the actions of Firehose's failed deliveries under `settings.location` (README
    "Redriving Firehose's failed deliveries"); the summary as a dict."""
    try:
        _tag_flow_run(redrive_job(settings))
    except Exception as exc:  # tags are for finding runs in the UI: never a reason to fail one
        get_run_logger().warning("could not tag this flow run (%s)", type(exc).__name__)
    with core_logs_to_api():
        outcome = run_redrive(settings)
    publish_redrive_summary(outcome.summary)
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary.to_dict()


def publish_redrive_summary(summary: RedriveSummary) -> None:
    """The redrive's summary as a table artifact and a log line (a warning with rejects)."""
    create_table_artifact(
        table=summary.table_rows(),
        key=artifact_key(summary.job, "redrive-summary"),
        description=f"moesif-backfill redrive {summary.job}: {summary.status}",
    )
    logger = get_run_logger()
    line = (
        "redrive %s %s: read %d actions, sent %d, rejected %d, skipped %d; lines rejected %d; "
        "objects deleted %d in %.1fs"
    )
    args = (
        summary.job,
        summary.status,
        summary.actions_read,
        summary.actions_sent,
        summary.actions_rejected,
        summary.actions_skipped,
        summary.lines_rejected,
        summary.objects_deleted,
        summary.duration_s,
    )
    logger.info(line, *args)
    if summary.status == "complete_with_rejects":
        logger.warning(
            "redrive %s: %d actions and %d lines rejected (not sent): see the rejects file %s",
            summary.job,
            summary.actions_rejected,
            summary.lines_rejected,
            summary.rejects_path or "(in the checkpoint)",
        )


__all__ = ["publish_redrive_summary", "redrive_failed_deliveries", "redrive_job"]
