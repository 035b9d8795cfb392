"""The checkpoint state of a backfill job: the pydantic models a checkpoint stores.

A job's progress is a :class:`JobState`: for every input file (:class:`FileProgress`), which
chunks Firehose has acknowledged (as merged half-open ranges of chunk indices) and how many rows
were sent or rejected, and the :class:`TimeWindow` the chunks were sent with. How a state is
stored is `connectors.checkpoint_format`; where, `connectors.checkpoint`. Nothing secret is
ever part of the state.
"""

from __future__ import annotations

import bisect
import re
from datetime import UTC, datetime
from typing import Any, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from moesif_backfill.errors import ConfigError

__all__ = [
    "FORMAT_VERSION",
    "FileProgress",
    "JobState",
    "TimeWindow",
    "utcnow_text",
    "validate_job_name",
]

# The version of the stored form (the envelope and the JobState schema in it).
FORMAT_VERSION: Final = 1

_JOB_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_JOB_NAME_RULE: Final = (
    "use 1-128 characters from letters A-Z a-z, digits 0-9, '.', '_' and '-' "
    "(and not just '.' or '..')"
)


def validate_job_name(job: str) -> str:
    """Return ``job`` if it is a valid job name, else raise :class:`ConfigError`.

    The name becomes a directory (or key prefix), so only a safe character set is allowed.
    """
    if not isinstance(job, str) or not _JOB_NAME_RE.fullmatch(job) or job in {".", ".."}:
        raise ConfigError(f"invalid job name {job!r}: {_JOB_NAME_RULE}")
    return job


def utcnow_text() -> str:
    """Now, as the ISO 8601 text a state records (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _range_start(r: tuple[int, int]) -> int:
    return r[0]


class FileProgress(BaseModel):
    """Progress of one input file, in chunks of ``chunk_rows`` rows.

    Chunk ``i`` covers rows ``[i * chunk_rows, (i + 1) * chunk_rows)``. ``done`` holds the
    committed chunk indices as sorted, disjoint, merged half-open ranges ``[a, b)``.
    """

    model_config = ConfigDict(extra="forbid")

    identity: dict[str, int | str]
    chunk_rows: int = Field(gt=0)
    done: list[tuple[int, int]] = Field(default_factory=list)
    total_chunks: int | None = Field(default=None, ge=0)
    rows_sent: int = Field(default=0, ge=0)
    rows_rejected: int = Field(default=0, ge=0)
    # Rows of committed chunks outside the run's time window (RunSettings.window_start/_end):
    # neither sent nor rejected. Stored only when non-zero, so checkpoints of runs without a
    # window stay readable by versions that do not know the field.
    rows_outside_window: int = Field(default=0, ge=0)
    # Rejected rows of each committed chunk that has any (a rerun counts them as rejected by an
    # earlier run, not as skipped). Checkpoints written before it was kept lack it.
    chunk_rejects: dict[int, int] = Field(default_factory=dict)
    # Committed chunks whose rows older than Moesif's 30-day window were not sent
    # (--skip-older-than-30-days): chunk -> (cutoff, rows): the rows whose time is before
    # `cutoff` (epoch microseconds) and inside the run's time window, `rows` of them. They are
    # pending: a run with --allow-older-than-30-days sends exactly them (`settle_deferred`).
    deferred: dict[int, tuple[int, int]] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored only when non-empty, so checkpoints that do not use them stay readable by
        # versions that do not know these fields.
        data: dict[str, Any] = handler(self)
        for name in ("rows_outside_window", "chunk_rejects", "deferred"):
            if not data.get(name):
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        prev_end = -1
        for a, b in self.done:
            if a < 0 or a >= b or a <= prev_end:
                raise ValueError(
                    f"done ranges must be sorted, disjoint, merged [a, b) with 0 <= a < b; "
                    f"got {self.done!r}"
                )
            prev_end = b
        if self.total_chunks is not None and prev_end > self.total_chunks:
            raise ValueError(
                f"done ranges reach chunk {prev_end - 1} but the file has only "
                f"{self.total_chunks} chunks"
            )
        return self

    def is_done(self, chunk: int) -> bool:
        """True if ``chunk`` has been committed."""
        i = bisect.bisect_right(self.done, chunk, key=_range_start)
        return i > 0 and self.done[i - 1][1] > chunk

    def mark_done(
        self,
        chunk: int,
        *,
        sent: int,
        rejected: int,
        outside: int = 0,
        deferred: tuple[int, int] | None = None,
    ) -> None:
        """Record ``chunk`` as committed with its row counts (``outside``: rows outside the
        run's time window; ``deferred``: (cutoff, rows) of rows too old to send now, see
        `deferred`).

        Idempotent: marking a chunk that is already done changes nothing (its counts are not
        added again). Adjacent ranges are merged.
        """
        if chunk < 0:
            raise ValueError(f"chunk index must be >= 0, got {chunk}")
        if self.total_chunks is not None and chunk >= self.total_chunks:
            raise ValueError(f"chunk {chunk} is past the end of the file ({self.total_chunks})")
        if sent < 0 or rejected < 0 or outside < 0:
            raise ValueError(
                f"row counts must be >= 0, got sent={sent} rejected={rejected} outside={outside}"
            )
        i = bisect.bisect_right(self.done, chunk, key=_range_start)
        if i > 0 and self.done[i - 1][1] > chunk:
            return  # already done
        lo, hi = chunk, chunk + 1
        start, end = i, i  # slice of self.done replaced by the merged range
        if i > 0 and self.done[i - 1][1] == chunk:
            start = i - 1
            lo = self.done[start][0]
        if i < len(self.done) and self.done[i][0] == chunk + 1:
            end = i + 1
            hi = self.done[i][1]
        self.done[start:end] = [(lo, hi)]
        self.rows_sent += sent
        self.rows_rejected += rejected
        self.rows_outside_window += outside
        if rejected:
            self.chunk_rejects[chunk] = rejected
        if deferred is not None and deferred[1] > 0:
            self.deferred[chunk] = deferred

    def settle_deferred(self, chunk: int, *, sent: int, rejected: int) -> None:
        """The deferred rows of committed ``chunk`` were sent (``sent``) or rejected: they are
        no longer pending. Idempotent: a chunk without deferred rows changes nothing."""
        if self.deferred.pop(chunk, None) is None:
            return
        self.rows_sent += sent
        self.rows_rejected += rejected
        if rejected:
            self.chunk_rejects[chunk] = self.chunk_rejects.get(chunk, 0) + rejected

    @property
    def rows_deferred(self) -> int:
        """Rows of committed chunks left pending as too old (--skip-older-than-30-days)."""
        return sum(n for _cutoff, n in self.deferred.values())

    @property
    def delivered(self) -> bool:
        """Complete with nothing left pending: every row sent, rejected or outside the window."""
        return self.complete and not self.deferred

    @property
    def complete(self) -> bool:
        """True once the total is known and every chunk is done (an empty file is complete);
        rows of it may still be deferred (see `delivered`)."""
        total = self.total_chunks
        if total is None:
            return False
        return total == 0 or self.done == [(0, total)]

    @property
    def chunks_done(self) -> int:
        return sum(b - a for a, b in self.done)


class TimeWindow(BaseModel):
    """The time window a job's chunks were committed with: [start, end) as ISO 8601 instants
    with their offset (None: unbounded on that side; both None: the job has no window).

    It is part of a job's identity: a committed chunk holds only the rows inside the window it
    was sent with, so skipping it under another window would leave rows undelivered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str | None = None
    end: str | None = None

    @classmethod
    def of(cls, start: datetime | None, end: datetime | None) -> TimeWindow:
        return cls(
            start=None if start is None else start.isoformat(),
            end=None if end is None else end.isoformat(),
        )

    def same_instants(self, other: TimeWindow) -> bool:
        """The same window, whatever offsets its bounds were written with."""

        def instant(text: str | None) -> datetime | None:
            return None if text is None else datetime.fromisoformat(text)

        mine = (instant(self.start), instant(self.end))
        return mine == (instant(other.start), instant(other.end))

    def describe(self) -> str:
        if self.start is None and self.end is None:
            return "no time window"
        return f"time window [{self.start or '-inf'}, {self.end or '+inf'})"


class JobState(BaseModel):
    """Everything a rerun needs to resume a job. Never holds credentials or other secrets."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    job: str
    mapping_fingerprint: str
    generation: int = Field(default=0, ge=0)
    created_at: str
    updated_at: str
    files: dict[str, FileProgress] = Field(default_factory=dict)
    # The time window of the job's runs; None in checkpoints written before it was recorded
    # (such a job takes on the window of its next run).
    window: TimeWindow | None = None

    @classmethod
    def new(cls, job: str, mapping_fingerprint: str) -> JobState:
        now = utcnow_text()
        return cls(
            job=validate_job_name(job),
            mapping_fingerprint=mapping_fingerprint,
            created_at=now,
            updated_at=now,
        )
