"""Command line: `moesif-backfill redrive s3://BUCKET/PREFIX/ --stream NAME` (pipeline/redrive.py,
README "Redriving Firehose's failed deliveries").

Every option is a field of `RedriveSettings` (pipeline/redrive_settings.py; the sending ones
are `SendSettings`'s, shared with `run`), also from MOESIF_BACKFILL_<OPTION>. Always direct
(no Prefect). Exit codes as for `run`: 0 complete (or nothing to redrive), 1 failed (the
checkpoint holds exactly what was delivered: rerun), 2 configuration/preflight error (nothing
sent), 3 complete with rejected lines or actions, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moesif_backfill.cli_errors import print_failure
from moesif_backfill.cli_flags import field_flag, given, sink_flags
from moesif_backfill.cli_help import ENV_HELP, EXIT_CODES_HELP, epilog
from moesif_backfill.cli_output import closing_lines, sender_lines
from moesif_backfill.cli_progress import add_log_format_flag, progress_display
from pipeline.redrive_settings import RedriveSettings

REDRIVE_EXAMPLES = """\
examples:
  # preview: the would-be records and a report by errorCode and day; nothing sent
  moesif-backfill redrive s3://my-firehose-backup/errors/ --dry-run --out redrive-preview/
  # re-send, then delete each object whose every action was delivered
  moesif-backfill redrive s3://my-firehose-backup/errors/ --stream moesif-actions --delete-after"""

R = RedriveSettings


def add_redrive_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "redrive",
        help="re-send the actions of Firehose's failed deliveries (its S3 error output)",
        epilog=epilog(REDRIVE_EXAMPLES, EXIT_CODES_HELP, ENV_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "location",
        metavar="S3_LOCATION",
        help="the error output location, s3://BUCKET/PREFIX/ (every object under it, at any "
        "depth, is read; nothing outside it)",
    )
    add_log_format_flag(p)
    target = p.add_mutually_exclusive_group()
    field_flag(
        target,
        R,
        "streams",
        "--stream",
        action="append",
        metavar="NAME",
        exclusive_with=("dry_run",),
        help="the Firehose stream to re-send to (one); or --sink moesif",
    )
    target.add_argument(
        "--dry-run",
        action="store_true",
        help="write the would-be records and the report to --out DIR; send nothing, no checkpoint",
    )
    field_flag(p, R, "out")
    sink_flags(p, R)
    field_flag(p, R, "since", metavar="TIME")
    field_flag(p, R, "until", metavar="TIME")
    field_flag(p, R, "delete_after")
    field_flag(p, R, "region", help="AWS region (default: boto3's configuration)")
    field_flag(p, R, "endpoint_url", help="Firehose endpoint URL (local stand-ins, VPC)")
    field_flag(p, R, "s3_endpoint_url", help="S3 endpoint URL (the location, S3 checkpoints)")
    field_flag(p, R, "aws_credentials_block", metavar="NAME")
    field_flag(p, R, "checkpoint")
    field_flag(p, R, "lease_seconds")
    field_flag(p, R, "job", help="job name (default: from the location)")
    field_flag(p, R, "rejects", help="rejects NDJSON file (default: in the checkpoint)")
    field_flag(p, R, "summary_json", help="write the summary here")
    field_flag(
        p,
        R,
        "ledger",
        metavar="LOCATION",
        help="write the ID ledger here (a directory or s3://bucket/prefix/): one Parquet row per "
        "action of each committed chunk (object, line, action, transaction_id, status), under "
        "job=<job>/ beside `run`'s",
    )
    field_flag(
        p,
        R,
        "allow_older_than_30_days",
        help="send actions older than Moesif's 30-day window (account enabled for backfill)",
    )
    field_flag(
        p,
        R,
        "skip_older_than_30_days",
        help="send only the actions inside Moesif's 30-day window; the older ones stay pending "
        "(actions_too_old) for a later run with --allow-older-than-30-days",
    )
    field_flag(p, R, "chunk_rows", help="lines of an object per checkpointed chunk")
    field_flag(p, R, "max_records_per_second")
    field_flag(p, R, "max_mib_per_second")
    field_flag(p, R, "max_in_flight", help="PutRecordBatch calls at once (per stream)")
    field_flag(p, R, "adaptive_rate", help="on throttling, lower the send rate, raise it slowly")
    field_flag(p, R, "retry_attempts")
    field_flag(
        p,
        R,
        "retry_budget_s",
        metavar="SECONDS",
        help="how long the run retries after transient delivery errors (throttling, 5xx, "
        "dropped connections) before it fails",
    )
    field_flag(p, R, "stall_timeout_s", metavar="SECONDS")
    field_flag(p, R, "reset", env=False, help="forget this job's checkpoint first")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def redrive_settings(args: argparse.Namespace) -> RedriveSettings:
    from pydantic import ValidationError

    from moesif_backfill.errors import ConfigError

    data = given(args, R)
    data["location"] = args.location
    data["mode"] = "dry-run" if args.dry_run else "send"
    try:
        return R.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.invalid("arguments", exc) from None


def main_redrive(args: argparse.Namespace) -> int:
    from moesif_backfill.cli_interrupts import StoppableFollow, run_interruptible
    from moesif_backfill.errors import BackfillError, exit_code_for
    from moesif_backfill.signals import INTERRUPTED
    from pipeline.redrive import run_redrive

    try:
        settings = redrive_settings(args)
    except BackfillError as exc:
        return print_failure(exc, debug=args.debug)
    follow = StoppableFollow(progress_display(args))
    outcome = run_interruptible(
        follow, lambda: run_redrive(settings, progress=[follow], stop=follow.stop), INTERRUPTED
    )
    follow.bar.stop()
    code = 0 if outcome.error is None else print_failure(outcome.error, debug=args.debug)
    summary = outcome.summary.to_dict()
    if outcome.error is not None:  # --sink moesif refused: 2 before any commit, 1 after
        code = exit_code_for(outcome.error, committed=summary["chunks_committed"]) or code
    if code == 0 or summary.get("actions_read") or summary.get("lines_read"):
        print_redrive_summary(summary)
    if code == 0 and summary.get("status") == "complete_with_rejects":
        code = 3
    return code


def print_redrive_summary(s: dict[str, Any]) -> None:
    if s.get("status") == "nothing_to_do":
        print(
            f"job {s['job']}: no objects under {s['location']}: nothing to redrive (Firehose "
            "writes failed deliveries under <error prefix>http-endpoint-failed/YYYY/MM/dd/HH/; "
            "check the location)",
            file=sys.stderr,
        )
        return
    sent = "would be sent" if s["mode"] == "dry-run" else "sent"
    earlier = s.get("actions_rejected_earlier") or 0
    lines = [
        f"job {s['job']}: {s['status']}  ({s['location']})",
        f"  objects        {s['objects_total']:>12,}  ({s['objects_complete']:,} complete)",
        f"  lines read     {s['lines_read']:>12,}  ({s['lines_rejected']:,} rejected, "
        f"{s['lines_outside_window']:,} outside --since/--until)",
        f"  actions read   {s['actions_read']:>12,}",
        f"  {sent:<14} {s['actions_sent']:>12,}",
        f"  rejected       {s['actions_rejected']:>12,}"
        + (f"  ({earlier:,} by an earlier run)" if earlier else ""),
        f"  skipped        {s['actions_skipped']:>12,}  (delivered by an earlier run)",
    ]
    if s.get("actions_outside_window"):
        lines.append(f"  outside window {s['actions_outside_window']:>12,}")
    if s.get("actions_too_old"):
        lines.append(
            f"  too old        {s['actions_too_old']:>12,}  (older than 30 days: pending; "
            "--allow-older-than-30-days sends them)"
        )
    if s["mode"] == "send":
        lines.extend(sender_lines(s))
    lines.append(f"  duration       {s['duration_s']:>11.1f}s")
    for code, n in s.get("by_error_code", {}).items():
        lines.append(f"  errorCode {code}: {n:,} action(s)")
    for day, n in s.get("by_arrival_day", {}).items():
        lines.append(f"  arrived {day}: {n:,} action(s)")
    if s.get("objects_deleted") or s.get("objects_kept"):
        lines.append(f"  deleted        {s['objects_deleted']:>12,}  object(s) (--delete-after)")
        for url, why in s.get("objects_kept", {}).items():
            lines.append(f"  kept {url}: {why}")
    for warning in s.get("warnings", []):
        lines.append(f"  warning: {warning}")
    lines += closing_lines(s, rejected=False, unit="actions")
    print("\n".join(lines), file=sys.stderr)


__all__ = ["add_redrive_parser", "main_redrive", "print_redrive_summary", "redrive_settings"]
