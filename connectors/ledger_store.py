"""Where the ID ledger's files go (pipeline/ledger.py): a local directory or s3://bucket/prefix/.

Layout: ``<location>/job=<job>/<name>.parquet`` (a hive-partitioned dataset: DuckDB's
``read_parquet('<location>/**/*.parquet', hive_partitioning=true)``, Athena, Spark). A file is
written in two steps, so that the costly one can run before the chunk is acknowledged:
`prepare` encodes the Parquet file (locally: writes and fsyncs a temp file in the same
folder), `publish` makes it the file of its name, replacing any earlier one whole (locally:
a rename, then the folder fsynced; on S3: one PutObject, which S3 applies atomically). A crash
never leaves a torn file under a final name. A local temp file starts with ``.`` (Athena,
Hive and Spark skip such files; DuckDB's ``*.parquet`` does not match it); `discard` removes
the temp file of a chunk that was not acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from connectors.s3_errors import error_code, is_s3, split_url
from moesif_backfill.errors import LedgerError, SourceError

PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    # Dictionary pages only where values repeat (ids and times are unique per row); min/max
    # statistics where they let a reader skip files (random UUIDs would not).
    "use_dictionary": ["source", "status", "reason", "run_id"],
    "write_statistics": ["source", "row", "action_time", "status"],
}


@dataclass(frozen=True)
class Staged:
    """A prepared ledger file: its final place, and a local temp file or the encoded bytes."""

    job: str
    name: str
    tmp: Path | None = None
    data: bytes | None = None


def job_folder(job: str) -> str:
    """The partition folder of `job`; a job name that cannot be one is refused."""
    if not job or "/" in job or job in {".", ".."} or any(c.isspace() for c in job):
        raise LedgerError(f"job name {job!r} cannot be a ledger partition folder (job=<job>/)")
    return f"job={job}"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return bytes(sink.getvalue().to_pybytes())


class LedgerStore(Protocol):
    def describe(self) -> str: ...
    def check(self, job: str) -> None: ...
    def prepare(self, job: str, name: str, table: pa.Table) -> Staged: ...
    def publish(self, staged: Staged) -> None: ...
    def discard(self, staged: Staged) -> None: ...


def write(store: LedgerStore, job: str, name: str, table: pa.Table) -> None:
    """Prepare and publish in one go."""
    store.publish(store.prepare(job, name, table))


class LocalLedgerStore:
    """Ledger files under a local directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.fsync = fsync

    def describe(self) -> str:
        return str(self.root)

    def _error(self, path: Path, exc: OSError) -> LedgerError:
        return LedgerError(
            f"cannot write the ledger file {path}: {exc.strerror or exc}; check that --ledger "
            "names a writable directory (the chunk was not committed: a rerun sends it again)"
        )

    def check(self, job: str) -> None:
        """The job's folder can be made and written to (LedgerError otherwise)."""
        folder = self.root / job_folder(job)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise self._error(folder, exc) from None

    def prepare(self, job: str, name: str, table: pa.Table) -> Staged:
        folder = self.root / job_folder(job)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise self._error(folder / name, exc) from None
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:  # encoded by Arrow, one write
                fh.write(parquet_bytes(table))
                if self.fsync:
                    os.fsync(fh.fileno())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise self._error(folder / name, exc) from None
            raise
        return Staged(job, name, tmp=Path(tmp))

    def publish(self, staged: Staged) -> None:
        assert staged.tmp is not None
        folder = staged.tmp.parent
        try:
            os.replace(staged.tmp, folder / staged.name)
            if self.fsync:
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise self._error(folder / staged.name, exc) from None

    def discard(self, staged: Staged) -> None:
        if staged.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(staged.tmp)


class S3LedgerStore:
    """Ledger objects under s3://bucket/prefix/, one PutObject each, with the run's S3 client
    (its credentials and endpoint)."""

    def __init__(self, url: str, client: Any) -> None:
        try:
            self.bucket, prefix = split_url(url)
        except SourceError as exc:
            raise LedgerError(str(exc).replace("Input ", "--ledger ")) from None
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check(self, job: str) -> None:
        """Only the name: a write permission shows with the first file (nothing of the chunk
        is committed when it fails)."""
        job_folder(job)

    def prepare(self, job: str, name: str, table: pa.Table) -> Staged:
        job_folder(job)
        return Staged(job, name, data=parquet_bytes(table))

    def publish(self, staged: Staged) -> None:
        key = f"{self.prefix}{job_folder(staged.job)}/{staged.name}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=staged.data)
        except (ClientError, BotoCoreError) as exc:
            why = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
            raise LedgerError(
                f"cannot write the ledger file s3://{self.bucket}/{key} ({why}); the "
                f"credentials in use need s3:PutObject on arn:aws:s3:::{self.bucket}/"
                f"{self.prefix}* (the chunk was not committed: a rerun sends it again)"
            ) from None

    def discard(self, staged: Staged) -> None:
        return None


def make_ledger_store(location: str, s3_client: Any = None) -> LedgerStore:
    """The ledger store of `location` (an s3:// URL needs `s3_client`)."""
    if is_s3(location):
        if s3_client is None:
            raise LedgerError(f"--ledger {location}: no S3 client to write it with")
        return S3LedgerStore(location, s3_client)
    return LocalLedgerStore(location)


__all__ = [
    "LedgerStore",
    "LocalLedgerStore",
    "S3LedgerStore",
    "Staged",
    "job_folder",
    "make_ledger_store",
    "parquet_bytes",
    "write",
]
