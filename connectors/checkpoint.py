"""Checkpoint state for a backfill job, and the storage-independent part of the checkpoint store.

A job's progress is a :class:`JobState`: for every input file, which chunks Firehose has
acknowledged (as merged half-open ranges of chunk indices) and how many rows were sent or
rejected. The runner commits the state after every acknowledged chunk, so a rerun resumes
exactly where the last one stopped: committed chunks are skipped, everything else is sent.

Stored form (one object per state file)::

    {"format_version": 1, "sha256": "<hex of the canonical body>", "body": {...JobState...}}

The canonical body is ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8. A torn, truncated, unparsable, checksum-failing or
schema-invalid ``state.json`` makes :meth:`CheckpointStore.load` fall back to
``state.prev.json`` (the generation before it) with a warning. That loses nothing: the older
generation has fewer committed chunks, so some chunks are re-sent, none are skipped. If neither
file is usable the load fails with :class:`CheckpointError`; it never silently starts over.

Backends (local directory now, S3 later) implement four byte-level primitives; every public
operation lives here once. Nothing secret is ever part of the state.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from moesif_backfill.errors import CheckpointError, ConfigError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointStore",
    "FileProgress",
    "JobState",
    "TimeWindow",
    "validate_job_name",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1

STATE_NAME: Final = "state.json"
PREV_NAME: Final = "state.prev.json"

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


_DOCUMENT_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.json")
_RESERVED_NAMES: Final = frozenset({STATE_NAME, PREV_NAME, "lease.json"})


def _document_name(name: str) -> str:
    if not _DOCUMENT_NAME_RE.fullmatch(name) or name in _RESERVED_NAMES:
        raise ConfigError(
            f"invalid checkpoint document name {name!r}: use lower-case letters, digits, '_' "
            f"and '-' ending in .json, and not {sorted(_RESERVED_NAMES)}"
        )
    return name


def _utcnow() -> str:
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

    @model_serializer(mode="wrap")
    def _omit_zero_outside(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("rows_outside_window"):
            data.pop("rows_outside_window", None)
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

    def mark_done(self, chunk: int, *, sent: int, rejected: int, outside: int = 0) -> None:
        """Record ``chunk`` as committed with its row counts (``outside``: rows outside the
        run's time window).

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

    @property
    def complete(self) -> bool:
        """True once the total is known and every chunk is done (an empty file is complete)."""
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
        now = _utcnow()
        return cls(
            job=validate_job_name(job),
            mapping_fingerprint=mapping_fingerprint,
            created_at=now,
            updated_at=now,
        )


class _Damaged(Exception):
    """A stored state is unusable (torn, corrupt or schema-invalid); the reason is the text."""


def _canonical(body: Any) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _envelope(body: bytes) -> bytes:
    """A canonical JSON body in the checksummed, versioned envelope (states and documents)."""
    digest = hashlib.sha256(body).hexdigest()
    head = f'{{"format_version":{FORMAT_VERSION},"sha256":"{digest}","body":'.encode("ascii")
    return head + body + b"}\n"


def encode_state(state: JobState) -> bytes:
    """Serialise ``state`` into the checksummed envelope."""
    return _envelope(_canonical(state.model_dump(mode="json")))


def _too_new(version: int, where: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint at {where} was written by a newer moesif-backfill "
        f"(checkpoint format {version}, this version reads format {FORMAT_VERSION}); "
        f"upgrade moesif-backfill to resume this job"
    )


def _decode(data: bytes, *, job: str, where: str) -> JobState:
    """Parse and verify one stored state.

    Raises :class:`_Damaged` for anything a torn or corrupted write can produce, and
    :class:`CheckpointError` for a state that is intact but must not be used (newer format,
    other job) - those must not fall back to the previous generation.
    """
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise _Damaged(f"not valid JSON ({type(e).__name__}; truncated or corrupt)") from e
    if not isinstance(envelope, dict):
        raise _Damaged("not a checkpoint envelope")
    version = envelope.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise _too_new(version, where)
    if version != FORMAT_VERSION:
        raise _Damaged(f"unsupported format_version {version!r}")
    body, digest = envelope.get("body"), envelope.get("sha256")
    if not isinstance(body, dict) or not isinstance(digest, str):
        raise _Damaged("envelope lacks 'body' or 'sha256'")
    if hashlib.sha256(_canonical(body)).hexdigest() != digest:
        raise _Damaged("checksum mismatch")
    body_version = body.get("format_version")
    if type(body_version) is int and body_version > FORMAT_VERSION:
        raise _too_new(body_version, where)
    try:
        state = JobState.model_validate(body)
    except ValidationError as e:
        raise _Damaged(f"invalid content ({e.error_count()} schema errors)") from e
    if state.format_version != FORMAT_VERSION:
        raise _Damaged(f"unsupported format_version {state.format_version!r} in body")
    if state.job != job:
        raise CheckpointError(
            f"the checkpoint at {where} belongs to job {state.job!r}, not {job!r}; "
            f"the checkpoint location was probably copied or misconfigured"
        )
    return state


class CheckpointStore(ABC):
    """Public checkpoint operations over a few byte-level primitives of a backend.

    Layout per job: ``state.json`` (current generation), ``state.prev.json`` (the generation
    before it) and a lock. Use :meth:`lock` around a run; :meth:`commit` and :meth:`reset` assume
    the caller holds it.
    """

    # -- public operations -----------------------------------------------------------------

    def load(self, job: str) -> JobState | None:
        """Return the job's latest usable state, or None if the job has never committed.

        Falls back to the previous generation (with a warning) when the current one is damaged
        or missing; raises :class:`CheckpointError` when neither is usable, when the state was
        written by a newer format, or when it belongs to another job.
        """
        validate_job_name(job)
        problems: list[str] = []
        current = self._read_checked(job, STATE_NAME)
        if current is not None:
            try:
                return _decode(current, job=job, where=self._where(job, STATE_NAME))
            except _Damaged as e:
                problems.append(f"{self._where(job, STATE_NAME)}: {e}")
        previous = self._read_checked(job, PREV_NAME)
        if previous is None:
            if current is None:
                return None
            problems.append(f"{self._where(job, PREV_NAME)}: missing")
        else:
            if current is None:
                problems.append(f"{self._where(job, STATE_NAME)}: missing")
            try:
                state = _decode(previous, job=job, where=self._where(job, PREV_NAME))
            except _Damaged as e:
                problems.append(f"{self._where(job, PREV_NAME)}: {e}")
            else:
                logger.warning(
                    "checkpoint for job %s: %s; resuming from the previous generation %d "
                    "(%s); chunks committed after it will be sent again",
                    job,
                    problems[0],
                    state.generation,
                    self._where(job, PREV_NAME),
                )
                return state
        raise CheckpointError(
            f"the checkpoint for job {job!r} is damaged and cannot be recovered: "
            f"{'; '.join(problems)}. Rerun with --reset to start this job over "
            f"(rows already delivered will be sent again)"
        )

    def commit(self, state: JobState) -> None:
        """Persist ``state`` as the next generation.

        Increments ``state.generation`` and sets ``state.updated_at``, copies the current
        intact generation to ``state.prev.json``, then atomically replaces ``state.json``. On
        failure the in-memory generation and timestamp are restored and CheckpointError raised.
        """
        job = validate_job_name(state.job)
        old_generation, old_updated = state.generation, state.updated_at
        state.generation += 1
        state.updated_at = _utcnow()
        try:
            data = encode_state(state)
            self._keep_previous(job)
            self._write_atomic(job, STATE_NAME, data)
        except Exception as e:
            state.generation, state.updated_at = old_generation, old_updated
            if isinstance(e, OSError):
                raise CheckpointError(
                    f"could not write the checkpoint for job {job!r} at "
                    f"{self._where(job, STATE_NAME)}: {e}"
                ) from e
            raise
        logger.debug("checkpoint for job %s committed generation %d", job, state.generation)

    def reset(self, job: str) -> None:
        """Forget the job's progress (``--reset``). The lock itself is left alone."""
        validate_job_name(job)
        try:
            # previous first: an interrupted reset then leaves the current state, not an old one
            self._delete(job, PREV_NAME)
            self._delete(job, STATE_NAME)
        except OSError as e:
            raise CheckpointError(
                f"could not delete the checkpoint for job {job!r} at {self.describe()}: {e}"
            ) from e
        logger.info("checkpoint for job %s reset", job)

    @contextlib.contextmanager
    def lock(self, job: str) -> Iterator[None]:
        """Hold the job's exclusive lock; raises JobLockedError if another live run holds it."""
        validate_job_name(job)
        release = self._acquire(job)
        try:
            yield
        finally:
            release()

    def read_document(self, job: str, name: str) -> dict[str, Any] | None:
        """Return the named JSON document stored beside the job's state, or None if absent.

        Documents (for example the nightly sync's watermark) use the state's checksummed
        envelope. A damaged or newer-format document raises :class:`CheckpointError`; there is
        no previous generation to fall back to, so the message names the object.
        """
        validate_job_name(job)
        where = self._where(job, _document_name(name))
        data = self._read_checked(job, name)
        if data is None:
            return None
        try:
            envelope = json.loads(data)
            version = envelope["format_version"]
            body = envelope["body"]
            digest = envelope["sha256"]
        except (ValueError, RecursionError, TypeError, KeyError) as e:
            raise CheckpointError(
                f"{where} is damaged ({type(e).__name__}); restore it or delete it "
                f"(see the documentation of what it records before deleting)"
            ) from None
        if type(version) is int and version > FORMAT_VERSION:
            raise _too_new(version, where)
        if not isinstance(body, dict) or hashlib.sha256(_canonical(body)).hexdigest() != digest:
            raise CheckpointError(
                f"{where} is damaged (checksum mismatch); restore it or delete it "
                f"(see the documentation of what it records before deleting)"
            )
        return body

    def write_document(self, job: str, name: str, body: dict[str, Any]) -> None:
        """Atomically replace the named JSON document (the caller holds the job's lock).

        Never store a secret in a document: it is as readable as the checkpoint.
        """
        validate_job_name(job)
        self._check_lease(job)
        try:
            self._write_atomic(job, _document_name(name), _envelope(_canonical(body)))
        except OSError as e:
            raise CheckpointError(f"could not write {self._where(job, name)}: {e}") from e

    @abstractmethod
    def describe(self) -> str:
        """Human-readable location of the store for messages (never a secret)."""

    # -- primitives each backend implements -----------------------------------------------

    @abstractmethod
    def _read(self, job: str, name: str) -> bytes | None:
        """Return the object's bytes, or None if it does not exist."""

    @abstractmethod
    def _write_atomic(self, job: str, name: str, data: bytes) -> None:
        """Replace the object with ``data`` so readers see either the old or the new bytes."""

    @abstractmethod
    def _delete(self, job: str, name: str) -> None:
        """Delete the object; a missing object is not an error."""

    @abstractmethod
    def _acquire(self, job: str) -> Callable[[], None]:
        """Take the job's exclusive lock or raise JobLockedError; return the release function."""

    # -- helpers ---------------------------------------------------------------------------

    def _check_lease(self, job: str) -> None:
        """Raise if this store held ``job``'s lock and lost it (backends with leases: S3).

        A local lock cannot be lost while its descriptor is open: nothing to check.
        """
        return None

    def _current_state(self, job: str) -> bytes | None:
        """The bytes of the current state.json, to keep as the previous generation (a backend
        that knows them without reading, S3, says so here)."""
        return self._read(job, STATE_NAME)

    def _where(self, job: str, name: str) -> str:
        return f"{self.describe()}/{job}/{name}"

    def _read_checked(self, job: str, name: str) -> bytes | None:
        try:
            return self._read(job, name)
        except OSError as e:
            raise CheckpointError(f"could not read {self._where(job, name)}: {e}") from e

    def _keep_previous(self, job: str) -> None:
        """Copy the current generation to state.prev.json, but only if it is intact.

        A damaged state.json (we resumed from state.prev.json) must not overwrite the good
        previous generation.
        """
        current = self._current_state(job)
        if current is None:
            return
        try:
            _decode(current, job=job, where=self._where(job, STATE_NAME))
        except _Damaged as e:
            logger.warning(
                "checkpoint for job %s: not keeping damaged %s as the previous generation (%s)",
                job,
                self._where(job, STATE_NAME),
                e,
            )
            return
        self._write_atomic(job, PREV_NAME, current)
