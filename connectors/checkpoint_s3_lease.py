"""The run lock of the S3 checkpoint: one lease object per job, renewed while the run holds it.

``lease.json`` holds ``{"owner": <uuid>, "host", "pid", "expires_at", ...}``:

* **acquire**: ``PutObject(IfNoneMatch="*")`` creates it only if it does not exist. If it exists
  and has not expired, :class:`JobLockedError` names the holder. If it has expired (the holder
  crashed), it is taken over with ``PutObject(IfMatch=<the expired lease's ETag>)``: S3 evaluates
  the condition atomically with the write, so of several runs taking over the same expired lease
  exactly one succeeds; the others get 412 (or 409 while a write is in flight), re-read the
  lease, find the winner's live lease and are refused.
* **renew**: a daemon thread rewrites it every ``renew_every_s`` with ``IfMatch=<our last
  ETag>``. A failed condition means another run took the lease over: an ERROR is logged,
  :attr:`JobLeases.lease_lost` is set and `JobLeases.check` raises ``CheckpointError("lease
  lost ...")`` from then on.
* **release**: ``DeleteObject(IfMatch=<our ETag>)`` so a lease that is no longer ours is never
  deleted.

Expiry compares the holder's ``expires_at`` (its wall clock) with the reader's wall clock, so
hosts need roughly synchronised clocks (NTP); how a too-early takeover is fenced is described in
`connectors.checkpoint_s3`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from connectors.checkpoint_s3_objects import (
    CONFLICT,
    MISSING,
    PRECONDITION,
    S3Objects,
    error_code,
    explain,
    is_client_error,
    precondition_failed,
)
from moesif_backfill.errors import CheckpointError, JobLockedError

__all__ = ["LEASE_NAME", "JobLeases", "Lease", "LeaseHolder"]

logger = logging.getLogger(__name__)

LEASE_NAME: Final = "lease.json"
_ACQUIRE_ATTEMPTS: Final = 5
_JOIN_TIMEOUT_S: Final = 10.0


def wall_now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


@dataclass
class LeaseHolder:
    """What a reader knows about the current lease holder."""

    owner: str | None
    host: str | None
    pid: int | None
    expires_at: datetime

    @classmethod
    def parse(cls, data: bytes, last_modified: Any, lease_seconds: float) -> LeaseHolder:
        try:
            info = json.loads(data)
            expires = datetime.fromisoformat(str(info["expires_at"]))
            if expires.tzinfo is None:
                raise ValueError("naive expires_at")
            pid = info.get("pid")
            return cls(
                owner=str(info.get("owner")),
                host=str(info.get("host")),
                pid=pid if isinstance(pid, int) else None,
                expires_at=expires,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            # not written by us: judge it by its age, with our lease length
            base = last_modified if isinstance(last_modified, datetime) else wall_now()
            return cls(None, None, None, base + timedelta(seconds=lease_seconds))

    def describe(self) -> str:
        if self.owner is None:
            return "holder details unavailable"
        owner = self.owner[:8]
        return f"pid {self.pid} on host {self.host}, lease {owner}"

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(eq=False)
class Lease:
    """A lease this process holds (or held)."""

    job: str
    key: str
    owner: str
    acquired_at: str
    etag: str
    valid_until: float  # time.monotonic() before which the lease is surely ours
    expires_at: str
    mutex: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lost: str | None = None
    released: bool = False


class JobLeases:
    """The leases one checkpoint store takes, one per job, each renewed by a daemon thread.

    ``held``: the leases held now, by job. ``lease_lost`` is set (and an ERROR logged) as soon
    as a held lease turns out to have been taken over or could not be renewed before it
    expired; from then on :meth:`check` raises :class:`CheckpointError` for that job.
    """

    def __init__(
        self,
        objects: S3Objects,
        lease_key: Callable[[str], str],
        *,
        lease_seconds: float,
        renew_every_s: float,
    ) -> None:
        self.objects = objects
        self.lease_key = lease_key
        self.lease_seconds = lease_seconds
        self.renew_every_s = renew_every_s
        self.lease_lost = threading.Event()
        self.held: dict[str, Lease] = {}
        self._lost: dict[str, str] = {}

    # -- checks --------------------------------------------------------------------------------

    def lost_error(self, job: str, reason: str | None = None) -> CheckpointError:
        reason = reason or self._lost.get(job, "unknown reason")
        return CheckpointError(
            f"lease lost for job {job}: {reason}. Another run owns the job now; this "
            f"run stops committing so it cannot overwrite that run's checkpoint "
            f"({self.objects.url(self.lease_key(job))})"
        )

    def check_deadline(self, job: str) -> None:
        """Raise if ``job``'s lease is lost; renew it now if renewal is behind."""
        if job in self._lost:
            raise self.lost_error(job, self._lost[job])
        lease = self.held.get(job)
        if lease is not None and time.monotonic() >= lease.valid_until:
            # renewal is behind (paused process, network trouble): renew now or give up
            self._renew_once(lease, inline=True)

    def check(self, job: str) -> None:
        """Raise unless the lease for ``job`` (if this store holds one) is provably still ours.

        A job this store never locked is not checked (same contract as the local store:
        callers hold the lock around a run).
        """
        self.check_deadline(job)
        lease = self.held.get(job)
        if lease is None:
            return
        with lease.mutex:
            if lease.lost is None and not lease.released:
                found = self.objects.get(lease.key)
                if found is None:
                    url = self.objects.url(lease.key)
                    self.mark_lost(lease, f"{url} was deleted by someone else")
                elif found[1] != lease.etag:
                    holder = LeaseHolder.parse(found[0], found[2], self.lease_seconds)
                    self.mark_lost(lease, f"another run took it over ({holder.describe()})")
        if lease.lost is not None:
            raise self.lost_error(job, lease.lost)

    # -- acquire, renew, release -----------------------------------------------------------------

    def _lease_body(self, job: str, owner: str, acquired_at: str) -> tuple[bytes, str]:
        now = wall_now()
        expires_at = _iso(now + timedelta(seconds=self.lease_seconds))
        info = {
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": job,
            "acquired_at": acquired_at,
            "renewed_at": _iso(now),
            "expires_at": expires_at,
            "lease_seconds": self.lease_seconds,
        }
        return json.dumps(info, sort_keys=True).encode("utf-8") + b"\n", expires_at

    def acquire(self, job: str) -> Callable[[], None]:
        """Take ``job``'s lease or raise JobLockedError; return the release function."""
        key = self.lease_key(job)
        url = self.objects.url(key)
        owner = uuid.uuid4().hex
        acquired_at = _iso(wall_now())

        def hold(etag: str, started: float, expires_at: str) -> Callable[[], None]:
            valid_until = started + self.lease_seconds  # the PUT started before S3 wrote it
            return self._start(Lease(job, key, owner, acquired_at, etag, valid_until, expires_at))

        for _ in range(_ACQUIRE_ATTEMPTS):
            started = time.monotonic()
            data, expires_at = self._lease_body(job, owner, acquired_at)
            try:
                etag = self.objects.put(key, data, IfNoneMatch="*")
            except Exception as e:
                if not (is_client_error(e) and error_code(e) in PRECONDITION | CONFLICT):
                    raise self.objects.error("create the lease", key, e) from e
            else:
                logger.debug("job %s: lease %s acquired (%s)", job, owner[:8], url)
                return hold(etag, started, expires_at)

            found = self.objects.get(key)
            if found is None:
                continue  # released meanwhile: try to create it again
            old_data, old_etag, last_modified = found
            holder = LeaseHolder.parse(old_data, last_modified, self.lease_seconds)
            now = wall_now()
            if not holder.expired(now):
                raise JobLockedError(
                    f"job {job} is already running ({holder.describe()}); wait for it or stop "
                    f"it; it expires at {_iso(holder.expires_at)} unless renewed (lease: {url})"
                )
            started = time.monotonic()
            data, expires_at = self._lease_body(job, owner, acquired_at)
            try:
                etag = self.objects.put(key, data, IfMatch=old_etag)
            except Exception as e:
                if precondition_failed(e):
                    continue  # another run took it over first: look again
                raise self.objects.error("take over the lease", key, e) from e
            logger.warning(
                "job %s: took over the expired lease of a previous run (%s), which expired at "
                "%s (%.1f s ago); that run probably crashed and this run resumes its checkpoint "
                "(lease: %s)",
                job,
                holder.describe(),
                _iso(holder.expires_at),
                (now - holder.expires_at).total_seconds(),
                url,
            )
            return hold(etag, started, expires_at)
        raise JobLockedError(
            f"job {job}: the lease at {url} kept changing while this run tried to acquire it; "
            f"another run is starting the same job; wait for it or stop it"
        )

    def _start(self, lease: Lease) -> Callable[[], None]:
        """Hold ``lease``: renew it in a daemon thread; return its release function."""
        self.held[lease.job] = lease
        self._lost.pop(lease.job, None)
        if not self._lost:
            self.lease_lost.clear()
        lease.thread = threading.Thread(
            target=self._renew_loop, args=(lease,), name=f"s3-lease-{lease.job}", daemon=True
        )
        lease.thread.start()
        return lambda: self._release(lease)

    def _renew_once(self, lease: Lease, *, inline: bool = False) -> None:
        """Extend the lease with a conditional PUT on our ETag.

        Raises CheckpointError when the lease is (now) lost; other errors propagate when the
        renewal could not be made but the lease may still be ours.
        """
        with lease.mutex:
            if lease.lost is None and not lease.released:
                started = time.monotonic()
                data, expires_at = self._lease_body(lease.job, lease.owner, lease.acquired_at)
                try:
                    etag = self.objects.put(lease.key, data, IfMatch=lease.etag)
                except Exception as e:
                    if is_client_error(e) and error_code(e) in PRECONDITION | MISSING:
                        who = self._describe_current_holder(lease.key)
                        self.mark_lost(lease, f"renewing the lease failed ({error_code(e)}): {who}")
                    elif time.monotonic() >= lease.valid_until:
                        self.mark_lost(
                            lease, f"it could not be renewed before it expired ({explain(e)})"
                        )
                    elif inline:
                        raise self.objects.error("renew the lease", lease.key, e) from e
                    else:
                        raise
                else:
                    lease.etag = etag
                    lease.valid_until = started + self.lease_seconds
                    lease.expires_at = expires_at
        if lease.lost is not None:
            raise self.lost_error(lease.job, lease.lost)

    def _describe_current_holder(self, key: str) -> str:
        """Best effort: who holds the lease object now (for messages only)."""
        try:
            found = self.objects.get(key)
        except CheckpointError:
            return "another run took it over (holder details unavailable)"
        if found is None:
            return "it was deleted"
        holder = LeaseHolder.parse(found[0], found[2], self.lease_seconds)
        return f"another run took it over ({holder.describe()})"

    def _renew_loop(self, lease: Lease) -> None:
        wait = self.renew_every_s
        while not lease.stop.wait(wait):
            try:
                self._renew_once(lease)
            except CheckpointError:
                return  # lost: already logged loudly
            except Exception as e:
                remaining = lease.valid_until - time.monotonic()
                logger.warning(
                    "job %s: could not renew the lease at %s (%s); retrying, it expires in %.1f s",
                    lease.job,
                    self.objects.url(lease.key),
                    explain(e),
                    remaining,
                )
                wait = min(self.renew_every_s, max(0.05, remaining / 3))
            else:
                wait = self.renew_every_s

    def mark_lost(self, lease: Lease, reason: str) -> None:
        """Record that ``lease`` is no longer ours (once), loudly."""
        if lease.lost is not None:
            return
        lease.lost = reason
        lease.stop.set()
        self._lost[lease.job] = reason
        self.lease_lost.set()
        logger.error(
            "job %s: LEASE LOST at %s: %s. This run must stop; its checkpoint commits are "
            "refused from now on so it cannot overwrite the other run's progress",
            lease.job,
            self.objects.url(lease.key),
            reason,
        )

    def _release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.stop.set()
        thread = lease.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
        url = self.objects.url(lease.key)
        with lease.mutex:
            lease.released = True
            if self.held.get(lease.job) is lease:
                del self.held[lease.job]
            if lease.lost is not None:
                logger.warning(
                    "job %s: not deleting %s: the lease was lost (%s)", lease.job, url, lease.lost
                )
                return
            try:
                self.objects.delete(lease.key, IfMatch=lease.etag)
            except Exception as e:
                if precondition_failed(e):
                    logger.warning(
                        "job %s: the lease at %s is no longer ours; left it alone", lease.job, url
                    )
                    return
                # never raise from release: it runs in a finally block
                logger.warning(
                    "job %s: could not release the lease at %s (%s); it expires at %s and the "
                    "next run can take it over then",
                    lease.job,
                    url,
                    explain(e),
                    lease.expires_at,
                )
                return
        logger.debug("job %s: lease %s released", lease.job, lease.owner[:8])
