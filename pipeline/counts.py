"""The counters of a run (and of each shard and file in it): the summary's row accounting.

Every row read is counted once per run in exactly one of actions_sent, rows_rejected,
rows_skipped, rows_outside_window and rows_too_old (pipeline/report.py states the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counts:
    rows_read: int = 0
    actions_sent: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    rows_outside_window: int = 0  # time outside RunSettings.window_start/_end: not sent
    # Of rows_rejected: rows an earlier run rejected (their chunks are not sent again).
    rows_rejected_earlier: int = 0
    # Rows older than Moesif's 30-day window left pending (--skip-older-than-30-days).
    rows_too_old: int = 0
    metadata_nonfinite_omitted: int = 0
    chunks_committed: int = 0
    min_time_us: int | None = None
    sample: list[str] = field(default_factory=list)
    # Rows sent without a field because their file lacks its column (if_missing: omit), by
    # the field's label (company_id, metadata.plan, ...).
    sent_without_field: dict[str, int] = field(default_factory=dict)

    TOTALS = (
        "rows_read",
        "actions_sent",
        "rows_rejected",
        "rows_skipped",
        "rows_outside_window",
        "rows_rejected_earlier",
        "rows_too_old",
        "metadata_nonfinite_omitted",
        "chunks_committed",
    )

    def totals(self) -> dict[str, int]:
        """The additive counters, by name (the summary has a field for each)."""
        return {name: getattr(self, name) for name in self.TOTALS}

    def add_earlier(self, *, sent: int, rejected: int, outside: int, deferred: int) -> None:
        """Rows an earlier run committed, counted by this one without sending them: sent
        (skipped), rejected (rejected by an earlier run), outside the time window, and left
        pending as too old."""
        self.rows_read += sent + rejected + outside + deferred
        self.rows_skipped += sent
        self.rows_rejected += rejected
        self.rows_rejected_earlier += rejected
        self.rows_outside_window += outside
        self.rows_too_old += deferred

    def add(self, other: Counts) -> None:
        for name, value in other.totals().items():
            setattr(self, name, getattr(self, name) + value)
        if other.min_time_us is not None:
            self.min_time_us = (
                other.min_time_us
                if self.min_time_us is None
                else min(self.min_time_us, other.min_time_us)
            )
        self.sample.extend(other.sample[: max(0, 3 - len(self.sample))])
        for label, n in other.sent_without_field.items():
            self.sent_without_field[label] = self.sent_without_field.get(label, 0) + n


__all__ = ["Counts"]
