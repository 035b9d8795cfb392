"""The checkpoint store: where a backfill job's progress is kept, storage-independently.

The runner commits the job's state (`connectors.checkpoint_state.JobState`) after every
acknowledged chunk, so a rerun resumes exactly where the last one stopped: committed chunks are
skipped, everything else is sent. Each state file holds one checksummed, versioned envelope
(`connectors.checkpoint_format`). A torn, truncated, unparsable, checksum-failing or
schema-invalid ``state.json`` makes :meth:`CheckpointStore.load` fall back to
``state.prev.json`` (the generation before it) with a warning. That loses nothing: the older
generation has fewer committed chunks, so some chunks are re-sent, none are skipped. If neither
file is usable the load fails with :class:`CheckpointError`; it never silently starts over.

Backends (a local directory: `connectors.checkpoint_local`; S3: `connectors.checkpoint_s3`)
implement four byte-level primitives; every public operation lives here once. This module is
the checkpoint's public face: the state's names are importable from here too. Nothing secret is
ever part of the state.
"""

from __future__ import annotations

import contextlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Final

from connectors.checkpoint_format import (
    DamagedState,
    decode_document,
    decode_state,
    encode_document,
    encode_state,
)
from connectors.checkpoint_state import (
    FORMAT_VERSION,
    FileProgress,
    JobState,
    TimeWindow,
    utcnow_text,
    validate_job_name,
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

STATE_NAME: Final = "state.json"
PREV_NAME: Final = "state.prev.json"

_DOCUMENT_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.json")
_RESERVED_NAMES: Final = frozenset({STATE_NAME, PREV_NAME, "lease.json"})


def _document_name(name: str) -> str:
    if not _DOCUMENT_NAME_RE.fullmatch(name) or name in _RESERVED_NAMES:
        raise ConfigError(
            f"invalid checkpoint document name {name!r}: use lower-case letters, digits, '_' "
            f"and '-' ending in .json, and not {sorted(_RESERVED_NAMES)}"
        )
    return name


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
                return decode_state(current, job=job, where=self._where(job, STATE_NAME))
            except DamagedState as e:
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
                state = decode_state(previous, job=job, where=self._where(job, PREV_NAME))
            except DamagedState as e:
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
        state.updated_at = utcnow_text()
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
        return decode_document(data, where=where)

    def write_document(self, job: str, name: str, body: dict[str, Any]) -> None:
        """Atomically replace the named JSON document (the caller holds the job's lock).

        Never store a secret in a document: it is as readable as the checkpoint.
        """
        validate_job_name(job)
        self._check_lease(job)
        try:
            self._write_atomic(job, _document_name(name), encode_document(body))
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
            decode_state(current, job=job, where=self._where(job, STATE_NAME))
        except DamagedState as e:
            logger.warning(
                "checkpoint for job %s: not keeping damaged %s as the previous generation (%s)",
                job,
                self._where(job, STATE_NAME),
                e,
            )
            return
        self._write_atomic(job, PREV_NAME, current)
