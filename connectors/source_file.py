"""The record of one input file (`SourceFile`), and small helpers every connector shares.

A `SourceFile` is a local file (absolute path, size, mtime) or an S3 object (``s3://`` URL,
size and ETag from the listing). It holds no client and no open file: it pickles to Dask
workers as it is, and is read through `connectors.file_access` with the run's `S3Store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from connectors.file_layout import NO_LAYOUT, FileLayout

Format = Literal["parquet", "csv", "ndjson"]
Compression = Literal["gzip", "zstd"]

#: Buffer of sequential reads of local files.
IO_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One input file. `path` is absolute, or an s3:// URL (then `etag` is set, mtime_ns 0)."""

    path: str
    format: Format
    compression: Compression | None
    size: int
    mtime_ns: int
    etag: str | None = None
    # Where the file was found: partition values, sniffed delimiter, manifest record count.
    # Not part of identity(): it follows from the inputs given, not from the file's bytes.
    layout: FileLayout = NO_LAYOUT

    def identity(self) -> dict[str, int | str]:
        """What a checkpoint stores and compares to notice that the file changed."""
        if self.etag is not None:
            return {"size": self.size, "etag": self.etag}
        return {"size": self.size, "mtime_ns": self.mtime_ns}

    @property
    def key(self) -> str:
        """Stable key for checkpoints: the absolute path."""
        return self.path


def one_line(text: object) -> str:
    """An error's text on one line (Arrow's messages span lines; ours are one line)."""
    return " ".join(str(text).split())


def is_ignored_name(name: str) -> bool:
    """Hidden/bookkeeping names skipped inside directories: .x, _SUCCESS, _committed_x, *.crc."""
    return name.startswith((".", "_")) or name.lower().endswith(".crc")
