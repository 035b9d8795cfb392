"""Checkpoint store in a local directory.

Layout: ``root/<job>/state.json``, ``root/<job>/state.prev.json``, ``root/<job>/lock``.

Writes go to a temp file in the same directory, are flushed and fsynced, renamed over the
target with ``os.replace`` and the directory is fsynced, so a crash leaves either the old or the
new file, never a torn one (on a local POSIX file system; network file systems may not honour
this, which is what the checksum in the stored envelope catches).

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``root/<job>/lock``. The kernel drops it when the
holder's file descriptor is closed, including when the process is killed, so a lock is never
stale. ``flock`` locks belong to an open file description: a second :meth:`lock` in the same
process opens a new descriptor and is refused too. A child created with ``fork`` while the lock
is held shares the description and keeps the lock alive until it exits as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from connectors.checkpoint import CheckpointStore
from moesif_backfill import failpoints
from moesif_backfill.errors import JobLockedError

__all__ = ["LocalCheckpointStore"]

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
_TMP_SUFFIX = ".tmp"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints under a local directory, one subdirectory per job."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def describe(self) -> str:
        return str(self.root)

    def _job_dir(self, job: str) -> Path:
        return self.root / job

    def _ensure_job_dir(self, job: str) -> Path:
        path = self._job_dir(job)
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            _fsync_dir(path.parent)
        return path

    # -- primitives --------------------------------------------------------------------------

    def _read(self, job: str, name: str) -> bytes | None:
        try:
            return (self._job_dir(job) / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write_atomic(self, job: str, name: str, data: bytes) -> None:
        directory = self._ensure_job_dir(job)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=_TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            failpoints.hit("checkpoint.before_replace")
            os.replace(tmp, directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    def _delete(self, job: str, name: str) -> None:
        path = self._job_dir(job) / name
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def _acquire(self, job: str) -> Callable[[], None]:
        directory = self._ensure_job_dir(job)
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise JobLockedError(
                f"job {job} is already running ({holder}); wait for it or stop it (lock: {path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
            self._remove_stale_temp_files(directory)
        except BaseException:
            os.close(fd)  # closing the descriptor releases the lock
            raise
        logger.debug("locked job %s (%s)", job, path)

        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            logger.debug("released lock of job %s", job)

        return release

    @staticmethod
    def _remove_stale_temp_files(directory: Path) -> None:
        """Remove temp files left by a writer that died mid-write (we hold the lock now)."""
        for tmp in directory.glob(f".*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _read_holder(fd: int) -> str:
    """Describe the lock holder from the lock file, as well as it can be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(info['pid'])} on host {info['host']} since {info['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        # the holder may be between truncating and rewriting the file
        return "holder details unavailable"
