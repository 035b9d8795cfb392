"""Opening input files, local or on S3: the one place the readers and detection read bytes.

    open_input(src, s3) -> pa.NativeFile        sequential, decompressed
    open_parquet_file(src, s3, **kwargs) -> pq.ParquetFile
    read_head(path, n, s3) -> bytes             first bytes, for content sniffing
    open_stream(path, compression, s3) -> pa.NativeFile

`s3` is the run's `S3Store` (connectors.s3_store); it is needed only for ``s3://`` paths, and
an S3 path without one is a programming error (ValueError). An S3 object is read as it was
listed: SourceChangedError if it was replaced since.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.s3_errors import is_s3
from connectors.source_file import IO_BUFFER_BYTES, SourceFile
from moesif_backfill.errors import SourceError

if TYPE_CHECKING:
    from connectors.s3_store import S3Store


def need_store(path: str, s3: S3Store | None) -> S3Store:
    """`s3`, or ValueError naming the S3 path read without one."""
    if s3 is None:
        raise ValueError(f"{path}: an S3 object is read through an S3Store; none was given")
    return s3


def open_stream(
    path: str,
    compression: str | None,
    s3: S3Store | None,
    *,
    etag: str | None = None,
    size: int | None = None,
) -> pa.NativeFile:
    """A sequential, decompressed byte stream (caller closes it); OSError for a local file
    that cannot be opened (the caller explains)."""
    if is_s3(path):
        return need_store(path, s3).open_stream(
            path, compression=compression, buffer_size=IO_BUFFER_BYTES, etag=etag, size=size
        )
    return pa.input_stream(path, compression=compression, buffer_size=IO_BUFFER_BYTES)


def open_input(src: SourceFile, s3: S3Store | None) -> pa.NativeFile:
    """Open `src` as a sequential, decompressed byte stream (caller closes it)."""
    try:
        return open_stream(src.path, src.compression, s3, etag=src.etag, size=src.size)
    except OSError as exc:
        raise SourceError(
            f"{src.path}: cannot open the file ({exc}); check it exists and is readable."
        ) from exc


def open_parquet_file(src: SourceFile, s3: S3Store | None, **kwargs: Any) -> pq.ParquetFile:
    """A ParquetFile over `src` that closes its file when closed (OSError/ArrowException for
    the caller to explain)."""
    if is_s3(src.path):
        return need_store(src.path, s3).open_parquet(
            src.path, etag=src.etag, size=src.size, **kwargs
        )
    return pq.ParquetFile(src.path, **kwargs)


def read_head(path: str, n: int, s3: S3Store | None) -> bytes:
    """The first `n` bytes (fewer for a shorter file)."""
    if is_s3(path):
        return need_store(path, s3).read_head(path, n)
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file ({exc}); check its permissions.") from exc
