"""Progress without a terminal, and `--log-format json` (README "Operating it").

* On a terminal the CLI shows a progress bar (cli_output.Bar). Without one (a pipe, a file, a
  container's log), `ProgressLog` writes a progress line on stderr every `PROGRESS_EVERY_S`
  seconds while rows move (rows done, of the total once it is known, rows/s, ETA) and a last
  one when the run ends: its `rows_done` equals the summary's `rows_read`. The interval can
  be changed (tests, very chatty or very quiet logs) with --progress-interval-s (or
  MOESIF_BACKFILL_PROGRESS_INTERVAL_S).
* `--log-format json` makes every stderr line one JSON object: `ts`, `level`, `logger`,
  `message`, and for progress lines the numbers (`rows_done`, `rows_total`, `percent`,
  `rows_per_second`, `eta_s`, `elapsed_s`) as JSON numbers. Lines the CLI prints as text
  (the summary, an error, the mode line) become objects with that text as `message`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any, Literal

from pydantic import BaseModel, Field

from moesif_backfill.cli_flags import env_var, field_flag

PROGRESS_EVERY_S = 15.0
PROGRESS_LOGGER = "moesif_backfill.progress"
LOG_FORMATS = ("text", "json")


class OutputSettings(BaseModel):
    """The CLI's output options (flags made from these fields: `add_log_format_flag`)."""

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="stderr as text, or one JSON object per line for log shippers (ts, level, "
        "logger, message; progress numbers as fields)",
    )
    progress_interval_s: float = Field(
        default=PROGRESS_EVERY_S,
        gt=0,
        le=3600,
        description="seconds between progress lines when stderr is not a terminal",
    )


def add_log_format_flag(p: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """--log-format and (`progress`) --progress-interval-s, also from MOESIF_BACKFILL_LOG_FORMAT
    and MOESIF_BACKFILL_PROGRESS_INTERVAL_S (cli_flags.apply_env)."""
    field_flag(p, OutputSettings, "log_format", choices=LOG_FORMATS)
    if progress:
        field_flag(p, OutputSettings, "progress_interval_s", metavar="SECONDS")


def json_logs(args: argparse.Namespace) -> bool:
    """Whether the command logs JSON: --log-format, else its variable (read here too: the
    format applies from the start, before apply_env validates the variables)."""
    given = getattr(args, "log_format", None)
    if given is None:
        given = os.environ.get(env_var("--log-format"), "").strip().lower()
    return bool(given == "json")


def _ts(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; the record's `fields` (a dict) are added as they are."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class JsonLines:
    """A text stream that passes JSON lines through and wraps any other line as a JSON object
    (`error: ...` lines at level ERROR), so that all of stderr is JSON lines."""

    def __init__(self, target: IO[str]) -> None:
        self.target = target
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                json.loads(line)
                self.target.write(line + "\n")
                return
        level = "ERROR" if line.startswith(("error:", "Traceback")) else "INFO"
        doc = {"ts": _ts(time.time()), "level": level, "logger": "moesif_backfill", "message": line}
        self.target.write(json.dumps(doc, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.target.fileno()


@contextlib.contextmanager
def log_format(args: argparse.Namespace, handler: logging.Handler | None) -> Iterator[None]:
    """Apply --log-format for the command: with json, the CLI's log handler writes JSON and
    stderr is wrapped in `JsonLines` (restored afterwards)."""
    if not json_logs(args):
        yield
        return
    old_formatter = handler.formatter if handler is not None else None
    if handler is not None:
        handler.setFormatter(JsonFormatter())
    old = sys.stderr
    wrapped = JsonLines(old)
    sys.stderr = wrapped
    try:
        yield
    finally:
        wrapped.flush()
        sys.stderr = old
        if handler is not None:
            handler.setFormatter(old_formatter)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
    return f", ETA {text}"


class ProgressLog:
    """A progress listener writing progress lines on stderr (see the module docstring): one
    every `interval` seconds while rows move, and a final one at `stop()`. JSON lines when the
    stream is a `JsonLines` (--log-format json)."""

    def __init__(self, interval: float = PROGRESS_EVERY_S, stream: IO[str] | None = None) -> None:
        self.interval = interval
        self.stream = stream
        self.started = time.monotonic()
        self.total: int | None = None
        self.done = 0
        self.reported = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress-log", daemon=True)
        self._thread.start()

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total

    def rows_done(self, n: int) -> None:
        with self._lock:
            self.done += n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                moved = self.done != self.reported
            if moved:
                self.emit()

    def fields(self) -> dict[str, Any]:
        with self._lock:
            done, total = self.done, self.total
            self.reported = done
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        percent = round(min(100.0, 100.0 * done / total), 1) if total else None
        eta = None
        if total and rate > 0:
            eta = round(max(total - done, 0) / rate, 1)
        return {
            "rows_done": done,
            "rows_total": total,
            "percent": percent,
            "rows_per_second": round(rate, 1),
            "eta_s": eta,
            "elapsed_s": round(elapsed, 1),
        }

    def emit(self, final: bool = False) -> None:
        f = self.fields()
        of = f" of {f['rows_total']:,} ({f['percent']:g}%)" if f["rows_total"] else ""
        message = (
            f"{'done' if final else 'progress'}: {f['rows_done']:,} rows{of}, "
            f"{f['rows_per_second']:,.0f} rows/s, {f['elapsed_s']:.0f}s"
            + ("" if final else _eta(f["eta_s"]))
        )
        stream = self.stream or sys.stderr
        record = logging.makeLogRecord(
            {
                "name": PROGRESS_LOGGER,
                "levelname": "INFO",
                "levelno": logging.INFO,
                "msg": message,
                "fields": {"final": final, **f},
            }
        )
        if isinstance(stream, JsonLines):
            line = JsonFormatter().format(record)
        else:
            line = f"INFO {PROGRESS_LOGGER}: {message}"
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            pass

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        if self.done:  # a run that failed before reading a row has no progress to tell
            self.emit(final=True)


def progress_display(args: argparse.Namespace) -> Any:
    """The CLI's progress listener: the bar on a terminal, `ProgressLog` otherwise, nothing
    with --quiet."""
    from moesif_backfill.cli_output import Bar  # noqa: PLC0415

    if getattr(args, "quiet", False):
        return Bar(False)
    if sys.stderr.isatty():
        return Bar(True)
    return ProgressLog(getattr(args, "progress_interval_s", PROGRESS_EVERY_S))


__all__ = [
    "PROGRESS_EVERY_S",
    "JsonFormatter",
    "JsonLines",
    "OutputSettings",
    "ProgressLog",
    "add_log_format_flag",
    "json_logs",
    "log_format",
    "progress_display",
]
