"""`redrive`'s summary: an exact account of every action read from the failed deliveries.

    actions_read == actions_sent + actions_rejected + actions_skipped + actions_outside_window
                    + actions_too_old                                   (`RedriveSummary.accounted`)

An action is counted once per run in exactly one of them. A line whose record cannot be decoded
counts as ONE rejected action (its actions are unknown) and in `lines_rejected`; the lines of a
window left out count in `lines_outside_window` and their actions in `actions_outside_window`.
`actions_skipped`: delivered by an earlier run of the job; `actions_too_old`: left pending
(--skip-older-than-30-days). The preview (`report`): actions by errorCode and by UTC day of
arrivalTimestamp, over the objects this run reads.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from transforms.failed_records import Line


@dataclass
class RedriveCounts:
    lines_read: int = 0
    lines_rejected: int = 0
    lines_outside_window: int = 0
    actions_read: int = 0
    actions_sent: int = 0
    actions_rejected: int = 0
    actions_rejected_earlier: int = 0  # of actions_rejected: by an earlier run
    actions_skipped: int = 0
    actions_outside_window: int = 0
    actions_too_old: int = 0
    chunks_committed: int = 0

    def add_earlier(self, *, sent: int, rejected: int, outside: int, deferred: int) -> None:
        """Actions an earlier run of the job committed, counted without sending them."""
        self.actions_read += sent + rejected + outside + deferred
        self.actions_skipped += sent
        self.actions_rejected += rejected
        self.actions_rejected_earlier += rejected
        self.actions_outside_window += outside
        self.actions_too_old += deferred


@dataclass
class Report:
    """Actions by errorCode and by arrival day; those older than Moesif's 30-day window."""

    by_error_code: Counter[str] = field(default_factory=Counter)
    by_arrival_day: Counter[str] = field(default_factory=Counter)
    older_than_30_days: int = 0
    oldest_us: int | None = None

    def add(self, line: Line) -> None:
        n = line.count
        self.by_error_code[line.error_code or "(none)"] += n
        day = "(unknown)"
        if line.arrival_ms is not None:
            day = dt.datetime.fromtimestamp(line.arrival_ms / 1000, dt.UTC).date().isoformat()
        self.by_arrival_day[day] += n

    def old(self, time_us: int) -> None:
        self.older_than_30_days += 1
        self.oldest_us = time_us if self.oldest_us is None else min(self.oldest_us, time_us)


def iso_us(us: int | None) -> str | None:
    return None if us is None else dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat()


@dataclass
class RedriveSummary:
    job: str
    mode: str
    location: str = ""
    status: str = "running"  # complete | complete_with_rejects | nothing_to_do | failed
    objects_total: int = 0
    objects_complete: int = 0
    objects_deleted: int = 0
    objects_kept: dict[str, str] = field(default_factory=dict)  # url -> why not deleted
    lines_read: int = 0
    lines_rejected: int = 0
    lines_outside_window: int = 0
    actions_read: int = 0
    actions_sent: int = 0
    actions_rejected: int = 0
    actions_rejected_earlier: int = 0
    actions_skipped: int = 0
    actions_outside_window: int = 0
    actions_too_old: int = 0
    actions_older_than_30_days: int = 0
    oldest_action_time: str | None = None
    by_error_code: dict[str, int] = field(default_factory=dict)
    by_arrival_day: dict[str, int] = field(default_factory=dict)
    chunks_committed: int = 0
    sink: str = "firehose"  # or "moesif" (the Collector API)
    firehose_calls: int = 0
    calls: int = 0  # --sink moesif: Collector API calls
    records_refused: int = 0  # --sink moesif: actions answered 413 on their own (rejected)
    bytes_compressed: int = 0  # --sink moesif: gzip'd request bodies
    records_retried: int = 0
    throttled_calls: int = 0
    throttled_records: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    bytes_sent: int = 0
    billable_5kb_units: int = 0
    duration_s: float = 0.0
    checkpoint: str | None = None
    rejects_path: str | None = None
    out_dir: str | None = None
    error: str | None = None
    error_type: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> bool:
        return self.actions_read == (
            self.actions_sent
            + self.actions_rejected
            + self.actions_skipped
            + self.actions_outside_window
            + self.actions_too_old
        )

    def absorb(self, counts: RedriveCounts, report: Report, stats: dict[str, Any]) -> None:
        for name, value in asdict(counts).items():
            setattr(self, name, value)
        self.by_error_code = dict(sorted(report.by_error_code.items()))
        self.by_arrival_day = dict(sorted(report.by_arrival_day.items()))
        self.actions_older_than_30_days = report.older_than_30_days
        self.oldest_action_time = iso_us(report.oldest_us)
        for name in (
            "firehose_calls",
            "records_retried",
            "throttled_calls",
            "throttled_records",
            "server_errors",
            "connection_errors",
            "bytes_sent",
            "billable_5kb_units",
            "calls",
            "records_refused",
            "bytes_compressed",
        ):
            setattr(self, name, int(stats.get(name, 0) or 0))
        self.sink = str(stats.get("sink") or self.sink)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accounted"] = self.accounted
        return d

    def table_rows(self) -> list[dict[str, Any]]:
        """The summary as metric/value rows for a table artifact: typed cells (numbers, the
        status text), the actions by errorCode as `by errorCode: <code>` rows."""
        keys = [
            "status",
            "objects_total",
            "objects_complete",
            "objects_deleted",
            "lines_read",
            "lines_rejected",
            "lines_outside_window",
            "actions_read",
            "actions_sent",
            "actions_rejected",
            "actions_rejected_earlier",
            "actions_skipped",
            "actions_outside_window",
            "actions_too_old",
            "actions_older_than_30_days",
            "firehose_calls",
            "calls",
            "records_retried",
            "throttled_calls",
            "server_errors",
            "connection_errors",
            "bytes_sent",
            "billable_5kb_units",
            "duration_s",
        ]
        d = self.to_dict()
        rows = [{"metric": k, "value": d[k]} for k in keys]
        rows += [
            {"metric": f"by errorCode: {c}", "value": n} for c, n in self.by_error_code.items()
        ]
        return rows


@dataclass(frozen=True)
class RedriveOutcome:
    summary: RedriveSummary
    error: BaseException | None = None


__all__ = ["RedriveCounts", "RedriveOutcome", "RedriveSummary", "Report", "iso_us"]
