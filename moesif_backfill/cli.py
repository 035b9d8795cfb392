"""Command line: `moesif-backfill run|validate|nightly|range|status` (nightly, range:
cli_days.py; status: cli_status.py; progress and --log-format: cli_progress.py).

The CLI runs the core (pipeline/job.py) directly, or as Prefect flow runs when a Prefect API is
configured (moesif_backfill/modes.py; README "Direct or Prefect"). Flag defaults and help come
from the settings models' fields (moesif_backfill/cli_flags.py).

Exit codes (EXIT_CODES_HELP in cli_help.py, shown by --help): 0 complete; 2 configuration/
preflight error, nothing sent; 3 complete with rejected rows (also rows an earlier run rejected:
while the job's rejects file lists any); 1 failed (undeliverable after retries, unreadable
source) with the checkpoint holding exactly what was delivered; 130 interrupted. Options may
also come from MOESIF_BACKFILL_<OPTION> variables (cli_flags.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from moesif_backfill import __version__
from moesif_backfill.cli_days import add_days_parsers, main_days
from moesif_backfill.cli_errors import add_debug_flag, print_failure
from moesif_backfill.cli_flags import apply_env, field_flag, given, mode_flags, sink_flags
from moesif_backfill.cli_help import ENV_HELP, EXIT_CODES_HELP, RUN_EXAMPLES, TOP_EXAMPLES, epilog
from moesif_backfill.cli_output import validate_rejects
from moesif_backfill.cli_progress import add_log_format_flag, log_format, progress_display
from moesif_backfill.cli_redrive import add_redrive_parser, main_redrive
from moesif_backfill.cli_sql import add_sql_parser, main_sql
from moesif_backfill.cli_status import add_status_parser, main_status
from moesif_backfill.modes import MODES_HELP, Mode, choose_mode
from moesif_backfill.signals import INTERRUPTED
from pipeline.settings import RunSettings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REJECTS = 0, 1, 2, 3
FORMATTER = argparse.RawDescriptionHelpFormatter


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories or globs")
    add_log_format_flag(p)
    field_flag(p, RunSettings, "mapping", required=True, help="mapping YAML file")
    field_flag(
        p,
        RunSettings,
        "exclude",
        metavar="GLOB",
        help="leave out input files matching GLOB (repeatable), matched against the path below "
        "the given directory or S3 prefix and against the base name, e.g. 'README.txt', "
        "'*.md', 'docs/*'",
    )
    field_flag(
        p,
        RunSettings,
        "allow_older_than_30_days",
        help="send rows older than Moesif's 30-day window (account enabled for backfill)",
    )
    field_flag(
        p,
        RunSettings,
        "skip_older_than_30_days",
        help="send only the rows inside Moesif's 30-day window; the older ones stay pending "
        "(rows_too_old) for a later run with --allow-older-than-30-days",
    )
    field_flag(p, RunSettings, "chunk_rows", help="rows per checkpointed chunk")
    field_flag(p, RunSettings, "region", help="AWS region (default: boto3's configuration)")
    field_flag(
        p,
        RunSettings,
        "s3_endpoint_url",
        help="S3 endpoint URL for s3:// sources and checkpoints (e.g. moto)",
    )
    field_flag(
        p,
        RunSettings,
        "aws_credentials_block",
        metavar="NAME",
        help="use the AWS credentials of this Prefect AwsCredentials block (prefect-aws)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moesif-backfill",
        description="Send billing/usage rows to Moesif as actions through Amazon Data Firehose.",
        epilog=epilog(TOP_EXAMPLES, EXIT_CODES_HELP, ENV_HELP, MODES_HELP),
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="backfill SOURCE... (or --dry-run to preview)",
        epilog=epilog(RUN_EXAMPLES, EXIT_CODES_HELP, ENV_HELP, MODES_HELP),
        formatter_class=FORMATTER,
    )
    _common(run)
    # One of --stream / --dry-run (RunSettings says so when neither is given: --stream may also
    # come from its environment variable, which argparse does not know about).
    target = run.add_mutually_exclusive_group()
    field_flag(
        target,
        RunSettings,
        "streams",
        "--stream",
        action="append",
        metavar="NAME",
        exclusive_with=("dry_run",),
        help="Firehose stream (delivery stream) name; repeat to spread actions over several "
        "streams by a hash of transaction_id",
    )
    target.add_argument(
        "--dry-run",
        action="store_true",
        help="write the records that would be sent to --out DIR; no AWS calls, never Prefect",
    )
    sink_flags(run, RunSettings)
    field_flag(run, RunSettings, "out", help="output directory for --dry-run")
    field_flag(
        run, RunSettings, "endpoint_url", help="Firehose endpoint URL (local stand-ins, VPC)"
    )
    field_flag(
        run,
        RunSettings,
        "checkpoint",
        help="checkpoint location: a directory or s3://bucket/prefix/",
    )
    field_flag(
        run,
        RunSettings,
        "lease_seconds",
        help="S3 checkpoint lease: how long a crashed run blocks the job",
    )
    field_flag(run, RunSettings, "job", help="job name (default: from the sources and mapping)")
    field_flag(run, RunSettings, "rejects", help="rejects NDJSON file (default: in the checkpoint)")
    field_flag(run, RunSettings, "summary_json", help="write the run summary here")
    field_flag(run, RunSettings, "ledger", metavar="LOCATION")
    _quota_flags(run)
    field_flag(run, RunSettings, "max_in_flight", help="PutRecordBatch calls at once (per stream)")
    field_flag(
        run,
        RunSettings,
        "adaptive_rate",
        help="on throttling, lower the send rate and raise it again slowly",
    )
    cluster = run.add_mutually_exclusive_group()
    field_flag(cluster, RunSettings, "dask_address", metavar="TCP_URL", exclusive_with=("workers",))
    field_flag(cluster, RunSettings, "workers", metavar="N", exclusive_with=("dask_address",))
    field_flag(
        run,
        RunSettings,
        "retry_attempts",
        help="give up on a batch after N attempts in a row that delivered nothing",
    )
    _optional_flags(run)
    field_flag(run, RunSettings, "reset", env=False, help="forget this job's checkpoint first")
    field_flag(
        run,
        RunSettings,
        "reprocess",
        env=False,
        action="append",
        metavar="FILE",
        help="send FILE again although it changed since the checkpoint",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    mode_flags(run)
    val = sub.add_parser(
        "validate",
        help="preflight: check the mapping and data, send nothing (never Prefect)",
        epilog=epilog(EXIT_CODES_HELP, ENV_HELP),
        formatter_class=FORMATTER,
    )
    _common(val)
    field_flag(
        val,
        RunSettings,
        "streams",
        "--stream",
        action="append",
        metavar="NAME",
        help="as for run: only their number counts, for the expected send duration (no AWS call)",
    )
    _quota_flags(val)
    sink_flags(val, RunSettings, validate=True)
    field_flag(val, RunSettings, "rejects", help="write every rejected row here (NDJSON)")
    add_days_parsers(sub)
    add_sql_parser(sub)
    add_status_parser(sub)
    add_redrive_parser(sub)
    for command in sub.choices.values():
        add_debug_flag(command)
    return parser


def _optional_flags(p: argparse.ArgumentParser) -> None:
    """Flags of RunSettings fields that a settings version may lack (retry budget, shards)."""
    if "retry_budget_s" in RunSettings.model_fields:
        field_flag(
            p,
            RunSettings,
            "retry_budget_s",
            metavar="SECONDS",
            help="how long a file is retried after transient errors (throttling, 5xx, dropped "
            "connections) before the run fails; the same in both modes",
        )
    if "stall_timeout_s" in RunSettings.model_fields:
        field_flag(p, RunSettings, "stall_timeout_s", metavar="SECONDS")
    if "shards_in_flight" in RunSettings.model_fields:
        field_flag(p, RunSettings, "shards_in_flight", metavar="N")


def _quota_flags(p: argparse.ArgumentParser) -> None:
    """The per-stream limits (docs/throughput.md), for run and validate."""
    field_flag(
        p,
        RunSettings,
        "max_records_per_second",
        help="each stream's Firehose records/s quota; sends are shaped to 98% of it",
    )
    field_flag(
        p,
        RunSettings,
        "max_mib_per_second",
        help="each stream's Firehose MiB/s quota (data bytes); sends are shaped to 98% of it",
    )


def _settings(args: argparse.Namespace) -> RunSettings:
    from pydantic import ValidationError

    from moesif_backfill.errors import ConfigError

    data = given(args, RunSettings)
    if args.command == "validate":
        data["mode"] = "validate"
    else:
        data["mode"] = "dry-run" if args.dry_run else "send"
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.invalid("arguments", exc) from None


class CliLogHandler(logging.Handler):
    """Warnings of the tool's own loggers on the current sys.stderr; Prefect's records (its
    narration, its account of a failed flow run) stay out, and so do the core's ERROR records
    unless --debug: the error that ends a run is printed once, by the CLI (`error: ...`)."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__(logging.WARNING)
        self.debug = debug
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and not self.debug:
            return False
        return not record.name.startswith("prefect") and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def setup_logging(debug: bool = False) -> CliLogHandler | None:
    """The CLI's log handler on the root logger; the handler added (None: one was there)."""
    root = logging.getLogger()
    handler = None
    if not any(isinstance(h, CliLogHandler) for h in root.handlers):
        handler = CliLogHandler(debug)
        root.addHandler(handler)
    if not any(type(h) is logging.NullHandler for h in root.handlers):
        # After main returns (its handler removed), what is left to log at exit (Prefect's
        # services draining their queues: "Still processing items ...") would reach Python's
        # last-resort handler and print below the CLI's output: it goes nowhere instead.
        root.addHandler(logging.NullHandler())
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # a Dask cluster's chatter
    return handler


def prefect_environment() -> None:
    """Defaults for Prefect, set before it loads (only loaded in Prefect mode, or by the lazy
    AwsCredentials-block loader)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline,flows,connectors,transforms")
    # Prefect's console handler (on the root logger) would print its own account of the run and
    # its shutdown chatter ("Still processing items ...") beside the CLI's: the records still
    # reach the Prefect API; the terminal gets the CLI's output only.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def run_command(args: argparse.Namespace, settings: RunSettings, mode: Mode) -> int:
    from moesif_backfill.cli_interrupts import StoppableFollow, run_interruptible
    from moesif_backfill.cli_output import print_summary, print_validate
    from moesif_backfill.errors import exit_code_for

    follow = StoppableFollow(progress_display(args))
    if mode.prefect:
        from flows.backfill import run_as_flow_run

        state = run_interruptible(follow, lambda: run_as_flow_run(settings, follow), INTERRUPTED)
        if follow.outcome is None:  # the flow run failed before the core ran
            follow.bar.stop()
            print_failure(state.result(raise_on_failure=False), debug=args.debug)
            print(
                "the Prefect flow run ended before the backfill started: nothing was sent; "
                "rerun, or run with --no-prefect",
                file=sys.stderr,
            )
            return EXIT_FAILED
    else:
        from pipeline.job import run_job

        follow.outcome = run_interruptible(
            follow, lambda: run_job(settings, progress=[follow], stop=follow.stop), INTERRUPTED
        )
    follow.bar.stop()
    outcome = follow.outcome
    code = EXIT_OK if outcome.error is None else print_failure(outcome.error, debug=args.debug)
    summary = outcome.summary.to_dict()
    if outcome.error is not None:  # --sink moesif refused: 2 before any commit, 1 after
        code = exit_code_for(outcome.error, committed=summary["chunks_committed"]) or code
    if settings.mode == "validate" and code == EXIT_OK:
        print_validate(summary, getattr(args, "rejects", None))
        print(follow.label())
        return code
    if summary.get("rows_read") or code == EXIT_OK:
        print_summary(summary)
    print(follow.label(), file=sys.stderr)
    if code == EXIT_OK and (
        summary.get("rows_rejected") or summary.get("status") == "complete_with_rejects"
    ):
        code = EXIT_REJECTS
    return code


def main(argv: list[str] | None = None) -> int:
    # Arrow's default allocator (mimalloc) keeps freed memory; the system allocator keeps peak
    # memory ~60 MB lower at the same speed (bench/README.md). Must be set before pyarrow loads.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    prefect_environment()
    args = build_parser().parse_args(argv)
    handler = setup_logging(getattr(args, "debug", False))
    try:
        with log_format(args, handler):
            return _command(args)
    except KeyboardInterrupt:  # before the command's own handlers were installed
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: one line, the traceback only with --debug
        return print_failure(exc, debug=getattr(args, "debug", False))
    finally:  # an in-process caller (tests) keeps its logging as it was
        if handler is not None:
            logging.getLogger().removeHandler(handler)


def _command(args: argparse.Namespace) -> int:
    from moesif_backfill.errors import BackfillError

    try:
        apply_env(args, os.environ)  # MOESIF_BACKFILL_<OPTION> for options not given
    except BackfillError as exc:
        return print_failure(exc, debug=getattr(args, "debug", False))
    if args.command in ("nightly", "range"):
        return main_days(args)
    if args.command == "sql":
        return main_sql(args)
    if args.command == "status":
        return main_status(args)
    if args.command == "redrive":
        return main_redrive(args)
    try:
        settings = _settings(args)
        always_direct = {"validate": "validate", "dry-run": "run --dry-run"}.get(settings.mode)
        mode = choose_mode(prefect=getattr(args, "prefect", None), always_direct=always_direct)
        if settings.dask_address or settings.workers:
            from pipeline.cluster import check_cluster_settings

            check_cluster_settings(settings)  # before a Prefect API or a cluster is started
    except BackfillError as exc:
        return print_failure(exc, debug=args.debug)
    with validate_rejects(settings) as run_settings:
        return run_command(args, run_settings, mode)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
