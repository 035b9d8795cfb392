"""Checkpoint store in S3, with the run lock as a renewed lease.

Layout under ``s3://bucket/prefix/``: ``<job>/state.json``, ``<job>/state.prev.json`` and
``<job>/lease.json``. Each write is one ``PutObject`` (S3 replaces an object atomically: readers
see the old or the new bytes, never a mix); the envelope, checksum and previous-generation logic
are the base class's, exactly as for the local store.

The lease (``lease.json``, `connectors.checkpoint_s3_lease`) is created with
``PutObject(IfNoneMatch="*")``, taken over when expired with ``IfMatch`` on the expired lease's
ETag, renewed by a daemon thread with ``IfMatch`` on our last ETag, and deleted on release with
``IfMatch`` on our ETag. Once another run took it over, :attr:`S3CheckpointStore.lease_lost` is
set and every later :meth:`commit` / :meth:`reset` raises ``CheckpointError("lease lost ...")``.

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

from collections.abc import Callable
from typing import Any, Final

import boto3
from botocore.config import Config

from connectors.checkpoint import (
    PREV_NAME,
    STATE_NAME,
    CheckpointStore,
    JobState,
    validate_job_name,
)
from connectors.checkpoint_s3_lease import LEASE_NAME, JobLeases
from connectors.checkpoint_s3_objects import (
    S3Objects,
    error_code,
    explain,
    precondition_failed,
    redact_endpoint,
)
from moesif_backfill.errors import CheckpointError, ConfigError

__all__ = ["LEASE_NAME", "S3CheckpointStore", "parse_s3_url"]

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


class S3CheckpointStore(CheckpointStore):
    """Checkpoints under ``s3://bucket/prefix/``, one key prefix per job, locked by a lease.

    ``lease_lost`` is set (and an ERROR logged) as soon as a held lease turns out to have been
    taken over or could not be renewed before it expired; from then on :meth:`commit` and
    :meth:`reset` raise :class:`CheckpointError` for that job. ``leases`` holds the leases
    (`connectors.checkpoint_s3_lease.JobLeases`), ``objects`` the bucket's objects.
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
        self.objects = S3Objects(self.client, self.bucket)
        self.leases = JobLeases(
            self.objects,
            lambda job: self.object_key(job, LEASE_NAME),
            lease_seconds=self.lease_seconds,
            renew_every_s=self.renew_every_s,
        )
        self.lease_lost = self.leases.lease_lost
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
            endpoint = redact_endpoint(endpoint_url)
            raise CheckpointError(
                f"could not set up an S3 client for {self.describe()}"
                f"{f' (endpoint {endpoint})' if endpoint else ''}: {explain(e)}"
            ) from e

    def __repr__(self) -> str:
        return f"S3CheckpointStore({self.describe()!r})"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- primitives ------------------------------------------------------------------------

    def object_key(self, job: str, name: str) -> str:
        return f"{self.prefix}/{job}/{name}" if self.prefix else f"{job}/{name}"

    def _read(self, job: str, name: str) -> bytes | None:
        found = self.objects.get(self.object_key(job, name))
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
                self._known[(job, name)] = (
                    self.objects.head_etag(self.object_key(job, name)),
                    None,
                )
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
        key = self.object_key(job, name)
        condition: dict[str, str] = {}
        if name in _FENCED:
            self.leases.check_deadline(job)
            expected = self._expected(job, name)[0]
            condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            etag = self.objects.put(key, data, **condition)
        except Exception as e:
            if condition and precondition_failed(e):
                # the expectation stays: every later write fails too, until a new load
                reason = (
                    f"{self.objects.url(key)} was changed by another run since this run "
                    f"loaded or last wrote it ({error_code(e)})"
                )
                lease = self.leases.held.get(job)
                if lease is None:
                    raise CheckpointError(
                        f"{reason}; not overwriting it. Is another run of job {job} writing "
                        f"to this checkpoint location? Runs should hold the job's lease"
                    ) from e
                self.leases.mark_lost(lease, reason)
                raise self.leases.lost_error(job, reason) from e
            raise self.objects.error("write", key, e) from e
        if name in _FENCED:
            self._known[(job, name)] = (etag, data if name == STATE_NAME else None)

    def _delete(self, job: str, name: str) -> None:
        key = self.object_key(job, name)
        try:
            self.objects.delete(key)
        except Exception as e:
            raise self.objects.error("delete", key, e) from e
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

    def _check_lease(self, job: str) -> None:
        """Raise unless this store's lease for ``job`` (if it holds one) is provably still ours."""
        self.leases.check(job)

    def _acquire(self, job: str) -> Callable[[], None]:
        return self.leases.acquire(job)
