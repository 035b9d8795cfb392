"""Where the ID ledger's files go (pipeline/ledger.py): a local directory or s3://bucket/prefix/.

Layout: ``<location>/job=<job>/<name>.parquet`` (a hive-partitioned dataset: DuckDB's
``read_parquet('<location>/**/*.parquet', hive_partitioning=true)``, Athena, Spark). Each file
replaces any earlier one of the same name whole: locally a temp file in the same directory,
flushed and fsynced, renamed over the target (and the directory fsynced); on S3 one PutObject
(S3 replaces an object atomically). A crash never leaves a torn file under a final name; a
temp file it leaves behind starts with ``.`` and ends in ``.tmp`` (DuckDB's glob above skips
neither: ``*.parquet`` does not match it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from connectors.s3_errors import error_code, is_s3, split_url
from moesif_backfill.errors import LedgerError, SourceError

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "version": "2.6"}


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
    def write(self, job: str, name: str, table: pa.Table) -> None: ...


class LocalLedgerStore:
    """Ledger files under a local directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.fsync = fsync

    def describe(self) -> str:
        return str(self.root)

    def write(self, job: str, name: str, table: pa.Table) -> None:
        folder = self.root / job_folder(job)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    pq.write_table(table, fh, **PARQUET_OPTIONS)
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
                os.replace(tmp, folder / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if self.fsync:
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise LedgerError(
                f"cannot write the ledger file {folder / name}: {exc.strerror or exc}; check "
                "that --ledger names a writable directory (the chunk was not committed: a "
                "rerun sends it again)"
            ) from None


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

    def write(self, job: str, name: str, table: pa.Table) -> None:
        key = f"{self.prefix}{job_folder(job)}/{name}"
        body = parquet_bytes(table)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except (ClientError, BotoCoreError) as exc:
            why = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
            raise LedgerError(
                f"cannot write the ledger file s3://{self.bucket}/{key} ({why}); the "
                f"credentials in use need s3:PutObject on arn:aws:s3:::{self.bucket}/"
                f"{self.prefix}* (the chunk was not committed: a rerun sends it again)"
            ) from None


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
    "job_folder",
    "make_ledger_store",
    "parquet_bytes",
]
