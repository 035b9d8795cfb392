"""What the CLI prints: the run summary, the validate report, the terminal progress bar."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moesif_backfill.modes import direct_label, flow_run_label

if TYPE_CHECKING:
    from pipeline.settings import RunSettings


class Follow:
    """The CLI's listener on a run: the progress bar, and the outcome of a Prefect flow run
    (`finished`, called by the flow before it returns or fails). Slotted: Prefect stores such
    a parameter as the placeholder "<Follow>" instead of encoding its attributes."""

    __slots__ = ("bar", "error", "flow_run", "outcome")

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar
        self.outcome: Any = None
        self.flow_run: Any = None
        self.error: BaseException | None = None  # a flow run's own failure (no outcome)

    def set_total(self, total: int | None) -> None:
        if self.bar is not None:
            self.bar.set_total(total)

    def rows_done(self, n: int) -> None:
        if self.bar is not None:
            self.bar.rows_done(n)

    def finished(self, outcome: Any, flow_run: Any) -> None:
        self.outcome, self.flow_run = outcome, flow_run

    def label(self) -> str:
        if self.flow_run is None:
            return direct_label()
        return flow_run_label(self.flow_run.name, self.flow_run.id)


class Bar:
    """A rich progress bar on the terminal's stderr (rows/s, ETA); nothing otherwise. It
    starts at once, indeterminate until the run knows its total (after planning); when it
    stops it shows the rows accounted for, as the summary does, and stays on screen."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Any = None
        self.task: Any = None
        if not enabled:
            return
        from rich.console import Console
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
            console=Console(file=sys.stderr),
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
        if self.progress is None:
            return
        done = self.progress.tasks[0].completed
        self.progress.update(self.task, total=done, completed=done)  # the rows accounted for
        self.progress.stop()
        self.progress = None


def sender_lines(summary: dict[str, Any]) -> list[str]:
    """The sink's counters: Firehose calls, or (--sink moesif) Collector API batch POSTs."""
    if summary.get("sink") == "moesif":
        return [
            f"  moesif calls   {summary.get('calls', 0):>12,}  retried records "
            f"{summary['records_retried']:,}, throttled calls (429) "
            f"{summary['throttled_calls']:,}, server errors {summary['server_errors']:,}, "
            f"connection errors {summary['connection_errors']:,}, refused (413) "
            f"{summary.get('records_refused', 0):,}",
            f"  bytes          {summary['bytes_sent']:>12,}  gzip "
            f"{summary.get('bytes_compressed', 0):,}",
        ]
    return [
        f"  firehose calls {summary['firehose_calls']:>12,}  retried records "
        f"{summary['records_retried']:,}, throttled calls {summary['throttled_calls']:,}, "
        f"throttled records {summary.get('throttled_records', 0):,}, "
        f"server errors {summary['server_errors']:,}, "
        f"connection errors {summary['connection_errors']:,}",
        f"  bytes          {summary['bytes_sent']:>12,}  billable 5 KB units "
        f"{summary['billable_5kb_units']:,}",
    ]


def print_summary(summary: dict[str, Any]) -> None:
    if not summary:
        return
    mode = summary.get("mode")
    sent_label = "would be sent" if mode == "dry-run" else "sent"
    earlier = summary.get("rows_rejected_earlier") or 0
    rejected_note = f"  ({earlier:,} by an earlier run)" if earlier else ""
    lines = [
        f"job {summary['job']}: {summary['status']}",
        f"  rows read      {summary['rows_read']:>12,}",
        f"  {sent_label:<14} {summary['actions_sent']:>12,}",
        f"  rejected       {summary['rows_rejected']:>12,}{rejected_note}",
        f"  skipped        {summary['rows_skipped']:>12,}  (delivered by an earlier run)",
        *sender_lines(summary),
        f"  duration       {summary['duration_s']:>11.1f}s  "
        f"({summary['rows_per_second']:,.0f} rows/s)",
    ]
    if summary.get("rows_too_old"):
        lines.insert(
            5,
            f"  too old        {summary['rows_too_old']:>12,}  (older than 30 days: pending; "
            "--allow-older-than-30-days sends them)",
        )
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
    rejected = bool(summary.get("rows_rejected"))
    lines += closing_lines(summary, rejected=rejected, unit="rows")
    print("\n".join(lines), file=sys.stderr)


def closing_lines(summary: dict[str, Any], *, rejected: bool, unit: str) -> list[str]:
    """A summary's last lines (run and redrive): where the rejects and the dry-run output
    are, and a warning if the `unit`s (rows, actions) do not add up."""
    lines = []
    rejects = rejected or summary.get("status") == "complete_with_rejects"
    if rejects and summary.get("rejects_path"):
        lines.append(f"  rejects file   {summary['rejects_path']}")
    if summary.get("out_dir"):
        lines.append(f"  output         {summary['out_dir']}")
    if not summary.get("accounted", True):
        lines.append(f"  WARNING: {unit} do not add up; please report this")
    return lines


REJECTS_SHOWN = 10  # rejected rows validate lists (all of them go to --rejects PATH)


@contextlib.contextmanager
def validate_rejects(settings: RunSettings) -> Iterator[RunSettings]:
    """`validate` writes every rejected row: to --rejects PATH (emptied first, so it holds
    only this validation's rows), else to a private temporary file (gone afterwards) from
    which the first ones are listed."""
    if settings.mode != "validate":
        yield settings
        return
    if settings.rejects is not None:
        settings.rejects.unlink(missing_ok=True)
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="moesif-backfill-validate-") as tmp:
        yield settings.model_copy(update={"rejects": Path(tmp) / "rejects.ndjson"})


def first_rejects(path: str | Path | None, limit: int = REJECTS_SHOWN) -> list[dict[str, Any]]:
    """The first `limit` lines of a rejects file (file, row, reason; not the row's values)."""
    if not path or not Path(path).exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in itertools.islice(fh, limit):
            e = json.loads(line)
            out.append({"file": e.get("source"), "row": e.get("row"), "reason": e.get("reason")})
    return out


def print_validate(summary: dict[str, Any], rejects: Path | None = None) -> None:
    """The validate report; `rejects`: the --rejects PATH given (else the file is temporary)."""
    print(f"mapping OK for {summary['files_total']} file(s)")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    for action in summary.get("sample_actions", []):
        print(f"  example: {action}")
    units = summary["billable_5kb_units"]
    print(
        f"rows {summary['rows_read']:,}: {summary['actions_sent']:,} valid actions, "
        f"{summary['rows_rejected']:,} would be rejected, "
        f"{summary['rows_older_than_30_days']:,} older than 30 days"
        f"{_too_old_note(summary)}\n"
        f"payload {summary['bytes_sent']:,} bytes; Firehose bills {units:,} units of 5 KB"
    )
    shown = first_rejects(summary.get("rejects_path")) if summary["rows_rejected"] else []
    if shown:
        first = f"first {len(shown)}" if summary["rows_rejected"] > len(shown) else "the"
        print(f"{first} rejected row(s) (file, row, reason):")
        for e in shown:
            print(f"  {e['file']} row {e['row']}: {e['reason']}")
        if rejects is not None:
            print(f"all {summary['rows_rejected']:,} rejected row(s), with their values: {rejects}")
        else:
            print("write all of them, with their values, with --rejects PATH")
    print(
        _quota_line(summary)
        or "expected send time: give --max-records-per-second and/or --max-mib-per-second "
        "(each stream's Firehose quota, see docs/throughput.md) and --stream for each stream"
    )


def _too_old_note(summary: dict[str, Any]) -> str:
    n = summary.get("rows_too_old") or 0
    return f" ({n:,} would stay pending: --skip-older-than-30-days)" if n else ""


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
