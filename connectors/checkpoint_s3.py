"""Checkpoint store in S3, with the run lock as a renewed lease.

Layout under ``s3://bucket/prefix/``: ``<job>/state.json``, ``<job>/state.prev.json`` and
``<job>/lease.json``. Each write is one ``PutObject`` (S3 replaces an object atomically: readers
see the old or the new bytes, never a mix); the envelope, checksum and previous-generation logic
are the base class's, exactly as for the local store.

The lease (``lease.json``) holds ``{"owner": <uuid>, "host", "pid", "expires_at", ...}``:

* **acquire**: ``PutObject(IfNoneMatch="*")`` creates it only if it does not exist. If it exists
  and has not expired, :class:`JobLockedError` names the holder. If it has expired (the holder
  crashed), it is taken over with ``PutObject(IfMatch=<the expired lease's ETag>)``: S3 evaluates
  the condition atomically with the write, so of several runs taking over the same expired lease
  exactly one succeeds; the others get 412 (or 409 while a write is in flight), re-read the
  lease, find the winner's live lease and are refused.
* **renew**: a daemon thread rewrites it every ``renew_every_s`` (default ``lease_seconds / 3``)
  with ``IfMatch=<our last ETag>``. A failed condition means another run took the lease over: the
  store logs an ERROR, sets :attr:`S3CheckpointStore.lease_lost` and refuses every later
  :meth:`commit` / :meth:`reset` with ``CheckpointError("lease lost ...")``.
* **release**: ``DeleteObject(IfMatch=<our ETag>)`` so a lease that is no longer ours is never
  deleted.

A zombie run (one that lost its lease without noticing yet) is fenced before it could overwrite
a newer run's checkpoint: every commit first checks that the lease is still within its local
(monotonic) deadline and that ``lease.json`` still carries our ETag; and, whatever the timing of
a takeover against those checks, ``state.prev.json`` and ``state.json`` are written with
``IfMatch`` on the ETag of **this run's own last write** of each (before its first write: the
ETag seen when the run loaded the checkpoint, or ``IfNoneMatch="*"`` if the object did not exist
then). Nothing is read just before writing, so the condition never adopts another run's write: a
run that took over and wrote anything makes every later write of the old run fail with 412, and
the old run stops (lease lost). The previous generation is copied from the bytes this run last
wrote (or loaded), which also saves a GET per commit. A run that took over but has not written
yet loses instead when the old run commits first: its first write then fails, nothing is
overwritten, and the checkpoint holds exactly what the old run delivered.

Expiry compares the holder's ``expires_at`` (its wall clock) with the reader's wall clock, so hosts
need roughly synchronised clocks (NTP). Skew can only make a takeover early, and an early takeover
is then fenced as above: the old run's commits fail, no state is overwritten.

Credentials come from boto3's standard chain (or the given ``client``); no message ever contains
one. Requires an S3 endpoint with conditional writes (AWS S3 since 2024, moto, MinIO, ...).
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
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from connectors.checkpoint import (
    PREV_NAME,
    STATE_NAME,
    CheckpointStore,
    JobState,
    validate_job_name,
)
from moesif_backfill.errors import CheckpointError, ConfigError, JobLockedError

__all__ = ["LEASE_NAME", "S3CheckpointStore", "parse_s3_url"]

logger = logging.getLogger(__name__)

LEASE_NAME: Final = "lease.json"
_ACQUIRE_ATTEMPTS: Final = 5
_JOIN_TIMEOUT_S: Final = 10.0

# S3 error codes meaning "the object is not what the condition expected"
_PRECONDITION: Final = frozenset({"PreconditionFailed", "412"})
_CONFLICT: Final = frozenset({"ConditionalRequestConflict", "409"})
_MISSING: Final = frozenset({"NoSuchKey", "404", "NotFound"})
# the objects whose writes are conditional on this run's own last write (or its load)
_FENCED: Final = frozenset({STATE_NAME, PREV_NAME})


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix/`` into ``(bucket, prefix)``; the prefix has no outer slashes."""
    if not isinstance(url, str) or url[:5].lower() != "s3://":
        raise ConfigError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix/)")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket or any(c.isspace() for c in bucket) or "?" in url or "#" in url:
        raise ConfigError(f"invalid S3 checkpoint location {url!r}: expected s3://bucket/prefix/")
    prefix = prefix.strip("/")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise ConfigError(
            f"invalid S3 checkpoint location {url!r}: the prefix has an empty, '.' or '..' part"
        )
    return bucket, prefix


def _wall_now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        if code:
            return code
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def _is_client_error(e: BaseException) -> bool:
    return isinstance(e, ClientError)


def _explain(e: BaseException) -> str:
    """What went wrong, and what to do, without anything secret (no raw request dumps)."""
    if _is_client_error(e):
        code = _code(e)
        message = str((getattr(e, "response", {}).get("Error") or {}).get("Message") or "")
        detail = f"{code}: {message}" if message else code
        if code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}:
            return (
                f"access denied ({detail}); the credentials boto3 found need s3:GetObject, "
                f"s3:PutObject and s3:DeleteObject on this prefix (and the bucket policy or KMS "
                f"key must allow them)"
            )
        if code == "NoSuchBucket":
            return f"the bucket does not exist ({detail}); create it or fix the location"
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}:
            return (
                f"the AWS credentials were rejected ({code}); check the profile, environment "
                f"variables or role boto3 uses, or refresh an expired session"
            )
        if code in {"NotImplemented", "501"}:
            return (
                f"the S3 endpoint does not implement this request ({detail}); the S3 checkpoint "
                f"needs conditional writes (If-None-Match / If-Match on PutObject)"
            )
        if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
            return f"S3 is throttling or unavailable ({detail}); rerun later to resume"
        return detail or type(e).__name__
    if isinstance(e, NoCredentialsError):
        return (
            "no AWS credentials found; configure boto3's standard chain (AWS_PROFILE, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or an instance/task role)"
        )
    if isinstance(e, NoRegionError):
        return "no AWS region configured; set AWS_REGION or pass a region"
    if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
        return "could not connect to the S3 endpoint (network, proxy or --s3-endpoint-url?)"
    if isinstance(e, ReadTimeoutError):
        return "S3 did not answer in time; rerun later to resume"
    if isinstance(e, BotoCoreError):
        return f"{type(e).__name__} talking to S3"
    return f"{type(e).__name__}: {e}"


def _precondition_failed(e: BaseException) -> bool:
    """True for the answers that mean "the object is no longer the one the condition named"."""
    return _is_client_error(e) and _code(e) in _PRECONDITION | _CONFLICT | _MISSING


class _LeaseLost(Exception):
    """The lease is no longer ours; the text says why."""


@dataclass
class _Holder:
    """What a reader knows about the current lease holder."""

    owner: str | None
    host: str | None
    pid: int | None
    expires_at: datetime

    @classmethod
    def parse(cls, data: bytes, last_modified: Any, lease_seconds: float) -> _Holder:
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
            base = last_modified if isinstance(last_modified, datetime) else _wall_now()
            return cls(None, None, None, base + timedelta(seconds=lease_seconds))

    def describe(self) -> str:
        if self.owner is None:
            return "holder details unavailable"
        owner = self.owner[:8]
        return f"pid {self.pid} on host {self.host}, lease {owner}"

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(eq=False)
class _Lease:
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


class S3CheckpointStore(CheckpointStore):
    """Checkpoints under ``s3://bucket/prefix/``, one key prefix per job, locked by a lease.

    ``lease_lost`` is set (and an ERROR logged) as soon as a held lease turns out to have been
    taken over or could not be renewed before it expired; from then on :meth:`commit` and
    :meth:`reset` raise :class:`CheckpointError` for that job.
    """

    def __init__(
        self,
        url: str,
        *,
        client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        lease_seconds: float = 60,
        renew_every_s: float | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if not lease_seconds > 0:
            raise ConfigError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        renew = lease_seconds / 3 if renew_every_s is None else renew_every_s
        if not 0 < renew < lease_seconds:
            raise ConfigError(
                f"renew_every_s must be > 0 and < lease_seconds ({lease_seconds}), got {renew!r}"
            )
        self.lease_seconds = float(lease_seconds)
        self.renew_every_s = float(renew)
        self.client = client if client is not None else self._make_client(endpoint_url, region)
        self.lease_lost = threading.Event()
        self._leases: dict[str, _Lease] = {}
        self._lost: dict[str, str] = {}
        # (job, state.json | state.prev.json) -> (ETag, or None when absent; state.json's bytes)
        # as this store last wrote them, else as it loaded them: what the next write expects.
        self._known: dict[tuple[str, str], tuple[str | None, bytes | None]] = {}

    def _make_client(self, endpoint_url: str | None, region: str | None) -> Any:
        # a renewal stuck in one request must not outlive the lease
        timeout = max(1.0, min(10.0, self.lease_seconds / 4))
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 3},
        )
        try:
            return boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        except Exception as e:
            endpoint = _redact_endpoint(endpoint_url)
            raise CheckpointError(
                f"could not set up an S3 client for {self.describe()}"
                f"{f' (endpoint {endpoint})' if endpoint else ''}: {_explain(e)}"
            ) from e

    def __repr__(self) -> str:
        return f"S3CheckpointStore({self.describe()!r})"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- keys and errors -------------------------------------------------------------------

    def _key(self, job: str, name: str) -> str:
        return f"{self.prefix}/{job}/{name}" if self.prefix else f"{job}/{name}"

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, action: str, key: str, e: BaseException) -> CheckpointError:
        return CheckpointError(f"could not {action} {self._url(key)}: {_explain(e)}")

    # -- primitives ------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str, Any] | None:
        """Return ``(body, etag, last_modified)`` or None if the object does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        except Exception as e:
            if _is_client_error(e) and _code(e) in _MISSING:
                return None
            raise self._error("read", key, e) from e
        return bytes(body), str(response.get("ETag", "")), response.get("LastModified")

    def _put(self, key: str, data: bytes, **condition: str) -> str:
        """PUT ``data``; return its ETag. ClientErrors propagate for the caller to judge."""
        response = self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="application/json", **condition
        )
        return str(response.get("ETag", ""))

    def _head_etag(self, key: str) -> str | None:
        """The object's ETag, or None if it does not exist."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            if _is_client_error(e) and _code(e) in _MISSING:
                return None
            raise self._error("read", key, e) from e
        return str(response.get("ETag", ""))

    def _read(self, job: str, name: str) -> bytes | None:
        found = self._get(self._key(job, name))
        if name in _FENCED:  # the first read since the load is what the first write expects
            etag, data = (None, None) if found is None else (found[1], found[0])
            self._known.setdefault((job, name), (etag, data if name == STATE_NAME else None))
        return None if found is None else found[0]

    def _expected(self, job: str, name: str) -> tuple[str | None, bytes | None]:
        """What ``name`` holds as far as this run knows: its own last write, else the load.

        A store that commits without loading first (not the flows: they load after taking the
        lock) learns it now.
        """
        known = self._known.get((job, name))
        if known is None:
            if name == STATE_NAME:
                self._read(job, name)
            else:
                self._known[(job, name)] = (self._head_etag(self._key(job, name)), None)
            known = self._known[(job, name)]
        return known

    def load(self, job: str) -> JobState | None:
        """As :meth:`CheckpointStore.load`; also notes the ETags of ``state.json`` and
        ``state.prev.json`` as loaded: this run's first commit is conditional on them."""
        validate_job_name(job)
        for name in _FENCED:
            self._known.pop((job, name), None)
        state = super().load(job)
        self._expected(job, PREV_NAME)  # one HeadObject unless the load read it
        return state

    def _current_state(self, job: str) -> bytes | None:
        return self._expected(job, STATE_NAME)[1]

    def _write_atomic(self, job: str, name: str, data: bytes) -> None:
        key = self._key(job, name)
        condition: dict[str, str] = {}
        if name in _FENCED:
            self._check_deadline(job)
            expected = self._expected(job, name)[0]
            condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            etag = self._put(key, data, **condition)
        except Exception as e:
            if condition and _precondition_failed(e):
                # the expectation stays: every later write fails too, until a new load
                reason = (
                    f"{self._url(key)} was changed by another run since this run loaded or "
                    f"last wrote it ({_code(e)})"
                )
                lease = self._leases.get(job)
                if lease is None:
                    raise CheckpointError(
                        f"{reason}; not overwriting it. Is another run of job {job} writing "
                        f"to this checkpoint location? Runs should hold the job's lease"
                    ) from e
                self._mark_lost(lease, reason)
                raise self._lost_error(job, reason) from e
            raise self._error("write", key, e) from e
        if name in _FENCED:
            self._known[(job, name)] = (etag, data if name == STATE_NAME else None)

    def _delete(self, job: str, name: str) -> None:
        key = self._key(job, name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            raise self._error("delete", key, e) from e
        if name in _FENCED:
            self._known[(job, name)] = (None, None)

    # -- guarded public operations -----------------------------------------------------------

    def commit(self, state: JobState) -> None:
        """As :meth:`CheckpointStore.commit`; refused once this store lost the job's lease."""
        self._check_lease(validate_job_name(state.job))
        super().commit(state)

    def reset(self, job: str) -> None:
        """As :meth:`CheckpointStore.reset`; refused once this store lost the job's lease."""
        self._check_lease(validate_job_name(job))
        super().reset(job)

    def _lost_error(self, job: str, reason: str | None = None) -> CheckpointError:
        reason = reason or self._lost.get(job, "unknown reason")
        return CheckpointError(
            f"lease lost for job {job}: {reason}. Another run owns the job now; this "
            f"run stops committing so it cannot overwrite that run's checkpoint "
            f"({self._url(self._key(job, LEASE_NAME))})"
        )

    def _check_deadline(self, job: str) -> None:
        if job in self._lost:
            raise self._lost_error(job, self._lost[job])
        lease = self._leases.get(job)
        if lease is not None and time.monotonic() >= lease.valid_until:
            # renewal is behind (paused process, network trouble): renew now or give up
            self._renew_once(lease, inline=True)

    def _check_lease(self, job: str) -> None:
        """Raise unless this store's lease for ``job`` (if it holds one) is provably still ours.

        A store that never locked ``job`` is not checked (same contract as the local store:
        callers hold the lock around a run).
        """
        self._check_deadline(job)
        lease = self._leases.get(job)
        if lease is None:
            return
        with lease.mutex:
            if lease.lost is None and not lease.released:
                found = self._get(lease.key)
                if found is None:
                    self._mark_lost(lease, f"{self._url(lease.key)} was deleted by someone else")
                elif found[1] != lease.etag:
                    holder = _Holder.parse(found[0], found[2], self.lease_seconds)
                    self._mark_lost(lease, f"another run took it over ({holder.describe()})")
        if lease.lost is not None:
            raise self._lost_error(job, lease.lost)

    # -- lease -------------------------------------------------------------------------------

    def _lease_body(self, job: str, owner: str, acquired_at: str) -> tuple[bytes, str]:
        now = _wall_now()
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

    def _acquire(self, job: str) -> Callable[[], None]:
        key = self._key(job, LEASE_NAME)
        url = self._url(key)
        owner = uuid.uuid4().hex
        acquired_at = _iso(_wall_now())
        for _ in range(_ACQUIRE_ATTEMPTS):
            started = time.monotonic()
            data, expires_at = self._lease_body(job, owner, acquired_at)
            try:
                etag = self._put(key, data, IfNoneMatch="*")
            except Exception as e:
                if not (_is_client_error(e) and _code(e) in _PRECONDITION | _CONFLICT):
                    raise self._error("create the lease", key, e) from e
            else:
                logger.debug("job %s: lease %s acquired (%s)", job, owner[:8], url)
                return self._start(
                    job=job,
                    key=key,
                    owner=owner,
                    acquired_at=acquired_at,
                    etag=etag,
                    started=started,
                    expires_at=expires_at,
                )

            found = self._get(key)
            if found is None:
                continue  # released meanwhile: try to create it again
            old_data, old_etag, last_modified = found
            holder = _Holder.parse(old_data, last_modified, self.lease_seconds)
            now = _wall_now()
            if not holder.expired(now):
                raise JobLockedError(
                    f"job {job} is already running ({holder.describe()}); wait for it or stop "
                    f"it; it expires at {_iso(holder.expires_at)} unless renewed (lease: {url})"
                )
            started = time.monotonic()
            data, expires_at = self._lease_body(job, owner, acquired_at)
            try:
                etag = self._put(key, data, IfMatch=old_etag)
            except Exception as e:
                if _precondition_failed(e):
                    continue  # another run took it over first: look again
                raise self._error("take over the lease", key, e) from e
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
            return self._start(
                job=job,
                key=key,
                owner=owner,
                acquired_at=acquired_at,
                etag=etag,
                started=started,
                expires_at=expires_at,
            )
        raise JobLockedError(
            f"job {job}: the lease at {url} kept changing while this run tried to acquire it; "
            f"another run is starting the same job; wait for it or stop it"
        )

    def _start(
        self,
        *,
        job: str,
        key: str,
        owner: str,
        acquired_at: str,
        etag: str,
        started: float,
        expires_at: str,
    ) -> Callable[[], None]:
        lease = _Lease(
            job=job,
            key=key,
            owner=owner,
            acquired_at=acquired_at,
            etag=etag,
            valid_until=started + self.lease_seconds,
            expires_at=expires_at,
        )
        self._leases[job] = lease
        self._lost.pop(job, None)
        if not self._lost:
            self.lease_lost.clear()
        lease.thread = threading.Thread(
            target=self._renew_loop, args=(lease,), name=f"s3-lease-{job}", daemon=True
        )
        lease.thread.start()
        return lambda: self._release(lease)

    def _renew_once(self, lease: _Lease, *, inline: bool = False) -> None:
        """Extend the lease with a conditional PUT on our ETag.

        Raises CheckpointError when the lease is (now) lost; other errors propagate when the
        renewal could not be made but the lease may still be ours.
        """
        with lease.mutex:
            if lease.lost is None and not lease.released:
                started = time.monotonic()
                data, expires_at = self._lease_body(lease.job, lease.owner, lease.acquired_at)
                try:
                    etag = self._put(lease.key, data, IfMatch=lease.etag)
                except Exception as e:
                    if _is_client_error(e) and _code(e) in _PRECONDITION | _MISSING:
                        who = self._describe_current_holder(lease.key)
                        self._mark_lost(lease, f"renewing the lease failed ({_code(e)}): {who}")
                    elif time.monotonic() >= lease.valid_until:
                        self._mark_lost(
                            lease, f"it could not be renewed before it expired ({_explain(e)})"
                        )
                    elif inline:
                        raise self._error("renew the lease", lease.key, e) from e
                    else:
                        raise
                else:
                    lease.etag = etag
                    lease.valid_until = started + self.lease_seconds
                    lease.expires_at = expires_at
        if lease.lost is not None:
            raise self._lost_error(lease.job, lease.lost)

    def _describe_current_holder(self, key: str) -> str:
        """Best effort: who holds the lease object now (for messages only)."""
        try:
            found = self._get(key)
        except CheckpointError:
            return "another run took it over (holder details unavailable)"
        if found is None:
            return "it was deleted"
        holder = _Holder.parse(found[0], found[2], self.lease_seconds)
        return f"another run took it over ({holder.describe()})"

    def _renew_loop(self, lease: _Lease) -> None:
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
                    self._url(lease.key),
                    _explain(e),
                    remaining,
                )
                wait = min(self.renew_every_s, max(0.05, remaining / 3))
            else:
                wait = self.renew_every_s

    def _mark_lost(self, lease: _Lease, reason: str) -> None:
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
            self._url(lease.key),
            reason,
        )

    def _release(self, lease: _Lease) -> None:
        if lease.released:
            return
        lease.stop.set()
        thread = lease.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
        with lease.mutex:
            lease.released = True
            if self._leases.get(lease.job) is lease:
                del self._leases[lease.job]
            if lease.lost is not None:
                logger.warning(
                    "job %s: not deleting %s: the lease was lost (%s)",
                    lease.job,
                    self._url(lease.key),
                    lease.lost,
                )
                return
            try:
                self.client.delete_object(Bucket=self.bucket, Key=lease.key, IfMatch=lease.etag)
            except Exception as e:
                if _precondition_failed(e):
                    logger.warning(
                        "job %s: the lease at %s is no longer ours; left it alone",
                        lease.job,
                        self._url(lease.key),
                    )
                    return
                # never raise from release: it runs in a finally block
                logger.warning(
                    "job %s: could not release the lease at %s (%s); it expires at %s and the "
                    "next run can take it over then",
                    lease.job,
                    self._url(lease.key),
                    _explain(e),
                    lease.expires_at,
                )
                return
        logger.debug("job %s: lease %s released", lease.job, lease.owner[:8])


def _redact_endpoint(endpoint_url: str | None) -> str:
    """The endpoint without any user:password part."""
    if not endpoint_url:
        return ""
    try:
        parts = urlsplit(endpoint_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid endpoint URL>"
