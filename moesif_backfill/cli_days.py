"""Command line: the `nightly` and `range` subcommands (pipeline/nightly.py, docs/nightly.md).

Each option is a field of `NightlySettings` / `RangeSettings` (pipeline/day_settings.py, where
its default lives) or a `RunSettings` field for every day's job (`options`). Direct mode runs
the core (`pipeline.nightly`); Prefect mode the `nightly-sync` / `backfill-range` flows
(README "Direct or Prefect"). The result is the per-day table. Exit codes as for `run`
(moesif_backfill/cli.py): 0 every day delivered, 2 a configuration error (every failed day's),
1 a day failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moesif_backfill.cli_flags import field_flag, given, mode_flags, sink_flags
from moesif_backfill.cli_help import DAYS_EXAMPLES, ENV_HELP, EXIT_CODES_HELP, epilog
from moesif_backfill.cli_progress import add_log_format_flag
from moesif_backfill.modes import MODES_HELP
from pipeline.day_settings import DaySettings, NightlySettings, RangeSettings
from pipeline.settings import RunSettings

# RunSettings fields the days' jobs take from the command line (DaySettings.options).
DAY_OPTIONS = (
    "exclude",
    "chunk_rows",
    "max_records_per_second",
    "max_mib_per_second",
    "max_in_flight",
    "retry_attempts",
    "retry_budget_s",
    "shards_in_flight",
    "stall_timeout_s",
)


def _metavar(name: str) -> str:
    return "GLOB" if name == "exclude" else name.upper()


def add_days_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `nightly` and `range` to the subparsers `sub` of the CLI."""
    fmt = argparse.RawDescriptionHelpFormatter
    nightly = sub.add_parser(
        "nightly",
        help="sync yesterday (or --date) and catch up missed days (docs/nightly.md)",
        epilog=epilog(DAYS_EXAMPLES, EXIT_CODES_HELP, ENV_HELP, MODES_HELP),
        formatter_class=fmt,
    )
    _days_common(nightly, NightlySettings)
    nightly.add_argument("--date", help="the day to sync, YYYY-MM-DD (default: yesterday)")
    field_flag(nightly, NightlySettings, "max_catch_up_days")
    field_flag(nightly, NightlySettings, "late_arrival_days")
    days = sub.add_parser(
        "range",
        help="backfill the days --start..--end, each its own job (docs/nightly.md)",
        epilog=epilog(DAYS_EXAMPLES, EXIT_CODES_HELP, ENV_HELP, MODES_HELP),
        formatter_class=fmt,
    )
    _days_common(days, RangeSettings)
    days.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    days.add_argument("--end", required=True, help="last day, YYYY-MM-DD (included)")
    field_flag(days, RangeSettings, "concurrency")
    field_flag(
        days,
        RunSettings,
        "reset",
        dest="option.reset",
        env=False,
        help="forget each day's checkpoint first (resends them)",
    )


def _days_common(p: argparse.ArgumentParser, model: type[DaySettings]) -> None:
    """Options of `nightly` and `range`: one per settings field."""
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help=model.model_fields["sources"]
        .description.replace("%", "%%")  # type: ignore[union-attr]
        .replace("window=time", "--window time"),
    )
    field_flag(p, model, "mapping", required=True)
    add_log_format_flag(p)
    field_flag(p, model, "job", required=True)
    field_flag(p, model, "streams", "--stream", action="append", metavar="NAME")
    sink_flags(p, model)
    field_flag(p, model, "timezone")
    field_flag(p, model, "window", choices=["path", "time"])
    field_flag(p, model, "checkpoint")
    field_flag(p, model, "endpoint_url")
    field_flag(p, model, "region")
    field_flag(p, model, "s3_endpoint_url")
    field_flag(p, model, "aws_credentials_block", metavar="NAME")
    field_flag(p, model, "allow_older_than_30_days")
    field_flag(p, model, "allow_empty_days")
    field_flag(p, model, "ledger", metavar="LOCATION")
    for name in DAY_OPTIONS:
        if name in RunSettings.model_fields:
            field_flag(p, RunSettings, name, dest=f"option.{name}", metavar=_metavar(name))
    p.add_argument("--summary-json", type=Path, help="write the per-day result here (JSON)")
    mode_flags(p)


def days_settings(args: argparse.Namespace) -> NightlySettings | RangeSettings:
    """The command's settings model from its flags (ConfigError when invalid)."""
    from pipeline.day_settings import validated

    model: type[DaySettings] = NightlySettings if args.command == "nightly" else RangeSettings
    data = given(args, model)
    options = {n: v for n, v in vars(args).items() if n.startswith("option.")}
    data["options"] = {k.removeprefix("option."): v for k, v in options.items()}
    data["mapping"] = str(data["mapping"])
    result: NightlySettings | RangeSettings = validated(model, data)
    return result


def days_table(result: dict[str, Any]) -> str:
    """The per-day table of a nightly/range result (empty when the run never started)."""
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


def _run(args: argparse.Namespace, settings: Any, prefect: bool, follow: Any) -> Any:
    """Run the command (directly or as a flow run); its DaysOutcome (None: the flow run
    ended before the core ran, its state's error in `follow.error`)."""
    if prefect:
        from flows import nightly as flows_nightly

        when = {k: getattr(args, k, None) for k in ("date", "start", "end")}
        state = flows_nightly.run_days_flow(args.command, settings, follow, **when)
        if follow.outcome is None:
            follow.error = state.result(raise_on_failure=False)
        return follow.outcome
    from pipeline import nightly

    run_job, stop = _direct_job(follow), getattr(follow, "stop", None)
    if args.command == "nightly":
        return nightly.run_nightly(settings, run_job, date=args.date, stop=stop)
    return nightly.run_range(settings, run_job, start=args.start, end=args.end, stop=stop)


class _RowsOnly:
    """The days' rows, summed, to the command's progress display (their totals are per day:
    not passed on, so a bar stays indeterminate and progress lines show no ETA)."""

    def __init__(self, display: Any) -> None:
        self.display = display

    def rows_done(self, n: int) -> None:
        self.display.rows_done(n)


def _direct_job(follow: Any) -> Any:
    """The `RunJob` of a direct nightly/range run: the core's `direct_job` with the progress
    display (`follow.bar`) following every day's rows."""
    import functools

    from pipeline.nightly import direct_job

    return functools.partial(
        direct_job, progress=[_RowsOnly(follow.bar)], stop=getattr(follow, "stop", None)
    )


def main_days(args: argparse.Namespace) -> int:
    """Run `nightly` or `range`; the exit code."""
    from moesif_backfill.cli_errors import print_failure
    from moesif_backfill.cli_interrupts import StoppableFollow, run_interruptible
    from moesif_backfill.cli_output import Bar
    from moesif_backfill.cli_progress import progress_display
    from moesif_backfill.errors import BackfillError
    from moesif_backfill.modes import choose_mode
    from pipeline.report import write_json_atomic

    debug = getattr(args, "debug", False)
    try:
        settings = days_settings(args)
        mode = choose_mode(prefect=args.prefect)
    except BackfillError as exc:
        return print_failure(exc, debug=debug)
    follow = StoppableFollow(progress_display(args) if not mode.prefect else Bar(False))
    outcome = run_interruptible(
        follow,
        lambda: _run(args, settings, mode.prefect, follow),
        "interrupted: every day's checkpoint holds what was delivered; rerun to resume",
    )
    follow.bar.stop()
    if outcome is None:
        code = print_failure(follow.error or RuntimeError("the flow run failed"), debug=debug)
        print("the Prefect flow run ended before its days ran; rerun, or --no-prefect")
        return code
    code = 0 if outcome.error is None else print_failure(outcome.error, debug=debug)
    if outcome.result:
        print(days_table(outcome.result))
    print(follow.label())
    if args.summary_json is not None and outcome.result:
        write_json_atomic(args.summary_json, outcome.result)
    return code


__all__ = ["add_days_parsers", "days_settings", "days_table", "main_days"]
