"""Command line: `moesif-backfill run|validate|nightly|range`.

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
    nightly = sub.add_parser(
        "nightly", help="sync yesterday (or --date) and catch up missed days (docs/nightly.md)"
    )
    _days_common(nightly)
    nightly.add_argument("--date", help="the day to sync, YYYY-MM-DD (default: yesterday)")
    nightly.add_argument(
        "--max-catch-up-days", type=int, default=7, help="missed days synced per run (default 7)"
    )
    nightly.add_argument(
        "--late-arrival-days",
        type=int,
        default=2,
        help="synced days re-scanned for late files (default 2)",
    )
    days = sub.add_parser(
        "range", help="backfill the days --start..--end, each its own job (docs/nightly.md)"
    )
    _days_common(days)
    days.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    days.add_argument("--end", required=True, help="last day, YYYY-MM-DD (included)")
    days.add_argument("--concurrency", type=int, default=2, help="days at once (default 2)")
    days.add_argument(
        "--reset", action="store_true", help="forget each day's checkpoint first (resends them)"
    )
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


def _days_common(p: argparse.ArgumentParser) -> None:
    """Options of `nightly` and `range`: one per flow parameter (flows/nightly.py)."""
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="path/prefix templates with {date} (e.g. 'exports/dt={date:%%Y-%%m-%%d}/'); "
        "with --window time, files read for every day",
    )
    p.add_argument("--mapping", required=True, type=Path, help="mapping YAML file")
    p.add_argument("--job", required=True, help="sync name; day D's job is JOB-D")
    p.add_argument("--stream", action="append", required=True, metavar="NAME", help="stream")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the days (default UTC)")
    p.add_argument(
        "--window",
        choices=["path", "time"],
        default="path",
        help="path: SOURCE names each day's files; time: send each day's rows of SOURCE",
    )
    p.add_argument("--checkpoint", default=".moesif-backfill/checkpoints", help="dir or s3://")
    p.add_argument("--endpoint-url", help="Firehose endpoint URL")
    p.add_argument("--region", help="AWS region")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint URL (sources and checkpoints)")
    p.add_argument("--aws-credentials-block", metavar="NAME", help="Prefect AwsCredentials block")
    p.add_argument("--allow-older-than-30-days", action="store_true")
    p.add_argument(
        "--allow-empty-days", action="store_true", help="a day without input is not an error"
    )
    p.add_argument("--chunk-rows", type=int, help="rows per checkpointed chunk")
    p.add_argument("--max-records-per-second", type=float)
    p.add_argument("--max-mib-per-second", type=float)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--retry-attempts", type=int)
    p.add_argument("--summary-json", type=Path, help="write the per-day result here")


def _days_params(args: argparse.Namespace) -> dict[str, Any]:
    names = ("chunk_rows", "max_records_per_second", "max_mib_per_second", "max_in_flight")
    options = {n: getattr(args, n) for n in (*names, "retry_attempts") if getattr(args, n)}
    if getattr(args, "reset", False):
        options["reset"] = True
    params: dict[str, Any] = {
        "source": args.sources,
        "mapping": str(args.mapping),
        "job": args.job,
        "stream": args.stream,
        "timezone": args.timezone,
        "window": args.window,
        "checkpoint": args.checkpoint,
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "s3_endpoint_url": args.s3_endpoint_url,
        "aws_credentials_block": args.aws_credentials_block,
        "allow_older_than_30_days": args.allow_older_than_30_days,
        "allow_empty_days": args.allow_empty_days,
        "options": options or None,
    }
    if args.command == "nightly":
        params.update(
            date=args.date,
            max_catch_up_days=args.max_catch_up_days,
            late_arrival_days=args.late_arrival_days,
        )
    else:
        params.update(start=args.start, end=args.end, concurrency=args.concurrency)
    return params


def _print_days(result: dict[str, Any]) -> None:
    if not result:
        return
    head = f"{result['flow']} {result['job']}: {result['status']}"
    if result["flow"] == "nightly":
        head += (
            f" (target {result['target_day']}, watermark {result['watermark_before']} -> "
            f"{result['watermark_after']})"
        )
    cols = ("rows_read", "sent", "rejected", "skipped", "outside_window")
    lines = [head, f"{'day':<10}  {'kind':<6}  {'status':<21}" + "".join(f"{c:>15}" for c in cols)]
    for d in result["days"]:
        cells = "".join(f"{'-' if d[c] is None else format(d[c], ','):>15}" for c in cols)
        lines.append(f"{d['day']:<10}  {d['kind']:<6}  {d['status']:<21}{cells}")
    total = "".join(f"{result['totals'][c]:>15,}" for c in cols)
    lines.append(f"{'total':<10}  {'':<6}  {'':<21}{total}")
    print("\n".join(lines))


def _main_days(args: argparse.Namespace) -> int:
    from flows import nightly
    from flows.report import write_json_atomic
    from moesif_backfill.errors import BackfillError

    run = nightly.nightly_sync if args.command == "nightly" else nightly.backfill_range
    code = EXIT_OK
    try:
        run(**_days_params(args))
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: every day's checkpoint holds what was delivered; rerun to resume")
        return 130
    result = dict(nightly.LAST_RESULT)
    _print_days(result)
    if args.summary_json is not None and result:
        write_json_atomic(args.summary_json, result)
    return code


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from flows.settings import RunSettings
    from moesif_backfill.errors import ConfigError

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
        msgs = [
            f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise ConfigError("invalid arguments:\n  " + "\n  ".join(msgs)) from None


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
        f"5xx {summary['server_errors']:,}, connection errors {summary['connection_errors']:,}",
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
    streams = summary.get("streams") or {}
    if len(streams) > 1:
        for name, c in streams.items():
            lines.append(
                f"  stream {name}: {c['records']:,} records, {c['calls']:,} calls, "
                f"{c['throttled']:,} throttled"
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
        return _main_days(args)
    try:
        settings = _settings(args)
        if settings.dask_address or settings.workers:
            from flows.dask_run import check_cluster_settings

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
