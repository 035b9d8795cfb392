"""Command line: the `nightly` and `range` subcommands (flows/nightly.py, docs/nightly.md).

Each option is one parameter of the `nightly-sync` or `backfill-range` flow; the result is the
per-day table. Exit codes as for `run` (moesif_backfill/cli.py): 0 every day delivered, 2 a
configuration error (every failed day's), 1 a day failed, 130 interrupted. Prefect is imported
only when a subcommand runs, so that --help answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moesif_backfill.errors import BackfillError


def add_days_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `nightly` and `range` to the subparsers `sub` of the CLI."""
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


def days_params(args: argparse.Namespace) -> dict[str, Any]:
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


def days_table(result: dict[str, Any]) -> str:
    """The per-day table of a nightly/range result (empty when the flow never started)."""
    if not result:
        return ""
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
    return "\n".join(lines)


def main_days(args: argparse.Namespace) -> int:
    """Run `nightly` or `range`; the exit code."""
    # Prefect loads here, not at import: --help answers at once.
    from flows import nightly  # noqa: PLC0415
    from pipeline.report import write_json_atomic  # noqa: PLC0415

    run = nightly.nightly_sync if args.command == "nightly" else nightly.backfill_range
    code = 0
    try:
        run(**days_params(args))
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI reports on the terminal
        code = exc.exit_code
    except KeyboardInterrupt:
        print(  # noqa: T201 - the CLI reports on the terminal
            "interrupted: every day's checkpoint holds what was delivered; rerun to resume"
        )
        return 130
    result = dict(nightly.LAST_RESULT)
    if result:
        print(days_table(result))  # noqa: T201 - the CLI's result
    if args.summary_json is not None and result:
        write_json_atomic(args.summary_json, result)
    return code


__all__ = ["add_days_parsers", "days_params", "days_table", "main_days"]
