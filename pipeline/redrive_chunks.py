"""One chunk of a failed-delivery object made ready to send: its records (one action each,
its original bytes), where each came from (line, position in the record), its rejects file
entries, its ID ledger rows (`LedgerEntries`, pipeline/redrive_ledger.py) and counts. Pure,
apart from the Line objects it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.redrive_plan import LineSplit, split_line
from transforms.failed_records import Action, Line, Rejected


@dataclass
class LedgerEntries:
    """A chunk's ID ledger rows, column by column: one per action of its lines (valid,
    rejected, too old or outside the window) and one per undecodable line (`action` None).
    `status` is `sent` for the records handed to the sink (the ledger makes it `would_send` in
    a dry run, `rejected` for the ones the sink refused)."""

    line: list[int] = field(default_factory=list)
    action: list[int | None] = field(default_factory=list)
    transaction_id: list[str | None] = field(default_factory=list)
    time_us: list[int | None] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)

    def add(
        self, line: int, index: int | None, action: Action | None, status: str, reason: str = ""
    ) -> int:
        """Add a row; its position."""
        self.line.append(line)
        self.action.append(index)
        self.transaction_id.append(action.transaction_id if action is not None else None)
        self.time_us.append(action.time_us if action is not None else None)
        self.status.append(status)
        self.reason.append(reason or None)
        return len(self.line) - 1

    def add_line(self, line: Line, status: str, reason: str = "") -> None:
        """Every action of `line` (one row for an undecodable line) with one status."""
        if line.line_rejected:
            self.add(line.number, None, None, status, reason)
            return
        slots: list[tuple[int, Action | None]] = [(a.index, a) for a in line.actions]
        slots += [(r.index, None) for r in line.rejected if r.index is not None]
        for index, action in sorted(slots, key=lambda slot: slot[0]):
            self.add(line.number, index, action, status, reason)

    def add_split(self, line: Line, split: LineSplit) -> bool:
        """The rows of a line `split_line` did not send (outside the window, rejected, too
        old); False when the line's `split.send` actions are still to be added."""
        if split.outside:
            self.add_line(line, "outside_window")
            return True
        whole = [r for r in split.rejected if r.index is None]
        if whole and not line.line_rejected:  # no arrivalTimestamp to apply the window to
            self.add_line(line, "rejected", whole[0].reason)
            return True
        for r in split.rejected:
            self.add(line.number, r.index, None, "rejected", r.reason)
        for a in split.too_old:
            self.add(line.number, a.index, a, "too_old")
        return False


@dataclass
class ChunkWork:
    records: list[bytes] = field(default_factory=list)
    where: list[tuple[int, int, str]] = field(default_factory=list)  # (line, index, tid)
    ledger: LedgerEntries = field(default_factory=LedgerEntries)
    entries: list[int] = field(default_factory=list)  # each record's row in `ledger`
    rejects: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0  # actions rejected (an undecodable line: one)
    outside: int = 0
    too_old: int = 0
    lines: int = 0
    lines_rejected: int = 0
    lines_outside: int = 0
    # sending the actions an earlier run left pending (--allow-older-than-30-days): the
    # chunk's other actions, as that run committed them
    settles: bool = False
    earlier_sent: int = 0
    earlier_rejected: int = 0
    earlier_outside: int = 0


def reject_entry(
    source: str, line: int, rejected: Rejected | None, reason: str, excerpt: str = ""
) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": source, "line": line, "reason": reason}
    if rejected is not None and rejected.index is not None:
        entry["action"] = rejected.index
    if excerpt or (rejected is not None and rejected.excerpt):
        entry["excerpt"] = excerpt or (rejected.excerpt if rejected else "")
    return entry


def build_chunk(
    source: str,
    lines: list[Line],
    window: tuple[int | None, int | None] | None,
    skip_before_us: int | None,
    max_action_bytes: int | None = None,
) -> ChunkWork:
    """A chunk sent for the first time (`skip_before_us`: leave older actions pending;
    `max_action_bytes`: --sink moesif's per-action limit, larger actions are rejected)."""
    work = ChunkWork(lines=len(lines))
    for line in lines:
        split = split_line(line, window, skip_before_us)
        work.ledger.add_split(line, split)
        if split.outside:
            work.outside += split.outside
            work.lines_outside += 1
            continue
        work.rejected += len(split.rejected)
        whole_line = [r for r in split.rejected if r.index is None]
        if whole_line:
            work.lines_rejected += 1
            work.rejects.append(
                reject_entry(source, line.number, None, whole_line[0].reason, whole_line[0].excerpt)
            )
        for r in split.rejected:
            if r.index is not None:
                work.rejects.append(reject_entry(source, line.number, r, r.reason))
        work.too_old += len(split.too_old)
        for action in split.send:
            if max_action_bytes is not None and len(action.data) > max_action_bytes:
                work.rejected += 1
                reason = (
                    f"the action has {len(action.data):,} bytes, over --moesif-action-max-bytes "
                    f"({max_action_bytes:,}; Moesif's event limit is 1 MB)"
                )
                work.rejects.append(
                    {**reject_entry(source, line.number, None, reason), "action": action.index}
                )
                work.ledger.add(line.number, action.index, action, "rejected", reason)
                continue
            work.records.append(action.data)
            work.where.append((line.number, action.index, action.transaction_id))
            work.entries.append(work.ledger.add(line.number, action.index, action, "sent"))
    return work


def build_resend(
    source: str,
    lines: list[Line],
    window: tuple[int | None, int | None] | None,
    before_us: int,
    earlier_rejected: int,
) -> ChunkWork:
    """A committed chunk whose actions older than `before_us` an earlier run left pending:
    exactly those are sent now."""
    work = ChunkWork(lines=len(lines), settles=True)
    total = 0
    for line in lines:
        total += line.count
        split = split_line(line, window, None)
        if split.outside:
            work.earlier_outside += split.outside
            continue
        for action in split.send:
            if action.time_us is not None and action.time_us < before_us:
                work.records.append(action.data)
                work.where.append((line.number, action.index, action.transaction_id))
    work.earlier_rejected = earlier_rejected
    work.earlier_sent = total - len(work.records) - work.earlier_outside - earlier_rejected
    return work


def done_counts(
    lines: list[Line],
    window: tuple[int | None, int | None] | None,
    rejected: int,
    deferred: int,
) -> tuple[int, int]:
    """(sent, outside) of a chunk an earlier run committed, from its lines."""
    total = sum(line.count for line in lines)
    outside = sum(split_line(line, window, None).outside for line in lines)
    return total - outside - rejected - deferred, outside


__all__ = [
    "ChunkWork",
    "LedgerEntries",
    "build_chunk",
    "build_resend",
    "done_counts",
    "reject_entry",
]
