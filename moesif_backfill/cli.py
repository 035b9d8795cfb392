"""Command line: `moesif-backfill run|validate|nightly|range` (nightly, range: cli_days.py).

Exit codes: 0 complete; 2 configuration/preflight error, nothing sent; 3 complete with rejected
rows; 1 failed (undeliverable after retries, unreadable source) with the checkpoint holding
exactly what was delivered.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from moesif_backfill.cli_days import add_days_parsers, main_days
from moesif_backfill.cli_sql import add_sql_parser, main_sql

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REJECTS = 0, 1, 2, 3


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories or globs")
    p.add_argument("--mapping", required=True, type=Path, help="mapping YAML file")
    p.add_argument(
        "--allow-older-than-30-days",
        action="store_true",
        help="send rows older than Moesif's 30-day window (account enabled for backfill)",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=10_000, help="rows per checkpointed chunk (default 10000)"
    )
    p.add_argument("--region", help="AWS region (default: boto3's configuration)")
    p.add_argument(
        "--s3-endpoint-url", help="S3 endpoint URL for s3:// sources and checkpoints (e.g. moto)"
    )
    p.add_argument(
        "--aws-credentials-block",
        metavar="NAME",
        help="use the AWS credentials of this Prefect AwsCredentials block (prefect-aws)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moesif-backfill",
        description="Send billing/usage rows to Moesif as actions through Amazon Data Firehose.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="backfill SOURCE... (or --dry-run to preview)")
    _common(run)
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--stream",
        action="append",
        metavar="NAME",
        help="Firehose stream (delivery stream) name; repeat to spread actions over several "
        "streams by a hash of transaction_id",
    )
    target.add_argument(
        "--dry-run",
        action="store_true",
        help="write the records that would be sent to --out DIR; no AWS calls",
    )
    run.add_argument("--out", type=Path, help="output directory for --dry-run")
    run.add_argument(
        "--endpoint-url", help="Firehose endpoint URL (local stand-ins, VPC endpoints)"
    )
    run.add_argument(
        "--checkpoint",
        default=".moesif-backfill/checkpoints",
        help="checkpoint location: a directory or s3://bucket/prefix/ "
        "(default .moesif-backfill/checkpoints)",
    )
    run.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="S3 checkpoint lease: how long a crashed run blocks the job (default 60)",
    )
    run.add_argument("--job", help="job name (default: derived from the sources and mapping path)")
    run.add_argument(
        "--rejects", type=Path, help="rejects NDJSON file (default: in the checkpoint)"
    )
    run.add_argument("--summary-json", type=Path, help="write the run summary here")
    _quota_flags(run)
    run.add_argument(
        "--max-in-flight", type=int, default=8, help="PutRecordBatch calls at once (per stream)"
    )
    run.add_argument(
        "--adaptive-rate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on throttling, lower the send rate and raise it again slowly (default: on)",
    )
    cluster = run.add_mutually_exclusive_group()
    cluster.add_argument(
        "--dask-address", metavar="TCP_URL", help="run shards on an existing Dask scheduler"
    )
    cluster.add_argument(
        "--workers", type=int, metavar="N", help="run shards on a local Dask cluster of N processes"
    )
    run.add_argument(
        "--retry-attempts",
        type=int,
        default=10,
        help="give up on a batch after N attempts in a row that delivered nothing",
    )
    run.add_argument("--reset", action="store_true", help="forget this job's checkpoint first")
    run.add_argument(
        "--reprocess",
        action="append",
        default=[],
        metavar="FILE",
        help="send FILE again although it changed since the checkpoint",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    val = sub.add_parser("validate", help="preflight: check the mapping and data, send nothing")
    _common(val)
    val.add_argument(
        "--stream",
        action="append",
        metavar="NAME",
        help="as for run: only their number counts, for the expected send duration (no AWS call)",
    )
    _quota_flags(val)
    add_days_parsers(sub)
    add_sql_parser(sub)
    return parser


def _quota_flags(p: argparse.ArgumentParser) -> None:
    """The per-stream limits (docs/throughput.md), for run and validate."""
    p.add_argument(
        "--max-records-per-second",
        type=float,
        help="each stream's Firehose records/s quota; sends are shaped to 98%% of it",
    )
    p.add_argument(
        "--max-mib-per-second",
        type=float,
        help="each stream's Firehose MiB/s quota (data bytes); sends are shaped to 98%% of it",
    )


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from moesif_backfill.errors import ConfigError
    from pipeline.settings import RunSettings

    data: dict[str, Any] = {
        "sources": args.sources,
        "mapping": args.mapping,
        "allow_older_than_30_days": args.allow_older_than_30_days,
        "chunk_rows": args.chunk_rows,
        "region": args.region,
        "s3_endpoint_url": args.s3_endpoint_url,
        "aws_credentials_block": args.aws_credentials_block,
    }
    if args.command == "validate":
        data.update(
            mode="validate",
            streams=args.stream or [],
            max_records_per_second=args.max_records_per_second,
            max_mib_per_second=args.max_mib_per_second,
        )
    else:
        data.update(
            mode="dry-run" if args.dry_run else "send",
            streams=args.stream or [],
            out=args.out,
            endpoint_url=args.endpoint_url,
            checkpoint=args.checkpoint,
            lease_seconds=args.lease_seconds,
            job=args.job,
            rejects=args.rejects,
            summary_json=args.summary_json,
            max_records_per_second=args.max_records_per_second,
            max_mib_per_second=args.max_mib_per_second,
            max_in_flight=args.max_in_flight,
            adaptive_rate=args.adaptive_rate,
            dask_address=args.dask_address,
            workers=args.workers,
            retry_attempts=args.retry_attempts,
            reset=args.reset,
            reprocess=args.reprocess,
        )
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.invalid("arguments", exc) from None


class _Bar:
    """A rich progress bar on a terminal (rows/s, ETA); nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.task: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]rows"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.speed:>10,.0f} rows/s" if False else "{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.start = time.monotonic()
        self.task = self.progress.add_task("rows", total=None, rate="")
        self.progress.start()

    def set_total(self, total: int | None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, total=total)

    def rows_done(self, n: int) -> None:
        if self.progress is None:
            return
        self.progress.advance(self.task, n)
        done = self.progress.tasks[0].completed
        rate = done / max(time.monotonic() - self.start, 1e-6)
        self.progress.update(self.task, rate=f"{rate:,.0f} rows/s")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_summary(summary: dict[str, Any]) -> None:
    if not summary:
        return
    mode = summary.get("mode")
    sent_label = "would be sent" if mode == "dry-run" else "sent"
    lines = [
        f"job {summary['job']}: {summary['status']}",
        f"  rows read      {summary['rows_read']:>12,}",
        f"  {sent_label:<14} {summary['actions_sent']:>12,}",
        f"  rejected       {summary['rows_rejected']:>12,}",
        f"  skipped        {summary['rows_skipped']:>12,}  (delivered by an earlier run)",
        f"  firehose calls {summary['firehose_calls']:>12,}  retried records "
        f"{summary['records_retried']:,}, throttled calls {summary['throttled_calls']:,}, "
        f"throttled records {summary.get('throttled_records', 0):,}, "
        f"server errors {summary['server_errors']:,}, "
        f"connection errors {summary['connection_errors']:,}",
        f"  bytes          {summary['bytes_sent']:>12,}  billable 5 KB units "
        f"{summary['billable_5kb_units']:,}",
        f"  duration       {summary['duration_s']:>11.1f}s  "
        f"({summary['rows_per_second']:,.0f} rows/s)",
    ]
    if summary.get("rows_outside_window"):
        lines.insert(
            5,
            f"  outside window {summary['rows_outside_window']:>12,}  (other days: not sent here)",
        )
    for label, n in (summary.get("sent_without_field") or {}).items():
        lines.append(f"  without {label}: {n:,} rows (their files lack the column: if_missing)")
    streams = summary.get("streams") or {}
    if len(streams) > 1:
        for name, c in streams.items():
            lines.append(
                f"  stream {name}: {c['records']:,} records, {c['calls']:,} calls, "
                f"{c['throttled']:,} throttled calls, {c.get('throttled_records', 0):,} "
                "throttled records"
            )
    quota = _quota_line(summary)
    if quota and mode == "send":
        lines.append(f"  {quota}")
    if summary.get("rows_rejected") and summary.get("rejects_path"):
        lines.append(f"  rejects file   {summary['rejects_path']}")
    if summary.get("out_dir"):
        lines.append(f"  output         {summary['out_dir']}")
    if not summary.get("accounted", True):
        lines.append("  WARNING: rows do not add up; please report this")
    print("\n".join(lines), file=sys.stderr)


def _print_validate(summary: dict[str, Any]) -> None:
    print(f"mapping OK for {summary['files_total']} file(s)")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    for action in summary.get("sample_actions", []):
        print(f"  example: {action}")
    units = summary["billable_5kb_units"]
    print(
        f"rows {summary['rows_read']:,}: {summary['actions_sent']:,} valid actions, "
        f"{summary['rows_rejected']:,} would be rejected, "
        f"{summary['rows_older_than_30_days']:,} older than 30 days\n"
        f"payload {summary['bytes_sent']:,} bytes; Firehose bills {units:,} units of 5 KB"
    )
    print(
        _quota_line(summary)
        or "expected send time: give --max-records-per-second and/or --max-mib-per-second "
        "(each stream's Firehose quota, see docs/throughput.md) and --stream for each stream"
    )


def _quota_line(summary: dict[str, Any]) -> str | None:
    """'expected send time ... at <limits>' when the summary has a records/s or MiB/s limit."""
    expected = summary.get("expected_send_s")
    limits = summary.get("send_limits") or {}
    if expected is None:
        return None
    given = []
    if limits.get("records_per_second"):
        given.append(f"{limits['records_per_second']:,.0f} records/s")
    if limits.get("mib_per_second"):
        given.append(f"{limits['mib_per_second']:g} MiB/s")
    n = int(limits.get("streams") or 1)
    per = " per stream" if n > 1 else ""
    return (
        f"expected send time {_duration(expected)} at {' and '.join(given)}{per}"
        f"{f' x {n} streams' if n > 1 else ''} (the quota's pace; sends are shaped to 98% of it)"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def main(argv: list[str] | None = None) -> int:
    # Arrow's default allocator (mimalloc) keeps freed memory; the system allocator keeps peak
    # memory ~60 MB lower at the same speed (bench/README.md). Must be set before pyarrow loads.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "flows,connectors,transforms")
    # Prefect narrates every run at INFO; the CLI prints its own summary. PREFECT_LOGGING_LEVEL=INFO
    # brings the narration back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from moesif_backfill.errors import BackfillError

    if args.command in ("nightly", "range"):
        return main_days(args)
    if args.command == "sql":
        return main_sql(args)
    try:
        settings = _settings(args)
        if settings.dask_address or settings.workers:
            from flows.dask_cluster import check_cluster_settings

            logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's chatter
            check_cluster_settings(settings)  # before a Prefect API or a cluster is started
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    from flows import backfill as flow_module

    bar = _Bar(sys.stderr.isatty() and not getattr(args, "quiet", False))
    flow_module.clear_progress_listeners()
    flow_module.add_progress_listener(bar)
    code = EXIT_OK
    try:
        flow_module.backfill(settings)
    except BackfillError as exc:
        bar.stop()
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        bar.stop()
        print(
            "interrupted: the checkpoint holds every acknowledged chunk; rerun to resume",
            file=sys.stderr,
        )
        return 130
    bar.stop()
    summary = dict(flow_module.LAST_SUMMARY)
    if settings.mode == "validate" and code == EXIT_OK:
        _print_validate(summary)
    elif summary.get("rows_read") or code == EXIT_OK:
        _print_summary(summary)
    if code == EXIT_OK and summary.get("rows_rejected"):
        code = EXIT_REJECTS
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
