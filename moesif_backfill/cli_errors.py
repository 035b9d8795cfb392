"""How the CLI reports a failure: one `error: ...` line (with the detail a user needs), a
traceback only with `--debug`."""

from __future__ import annotations

import argparse
import sys
import traceback


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on failure, also print the traceback (and the core's own error log lines)",
    )


def print_failure(exc: BaseException, *, debug: bool = False) -> int:
    """Print `exc` once, as the CLI's `error:` line; its exit code. Our own errors carry the
    message and what to do; anything else is an unexpected error (exit 1), with its traceback
    only when `debug`."""
    from moesif_backfill.errors import BackfillError  # noqa: PLC0415

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, BackfillError):
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    sys.stderr.write(
        f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback, "
        "and please report it)\n"
    )
    return 1


__all__ = ["add_debug_flag", "print_failure"]
