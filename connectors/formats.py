"""File format detection: by name first, then by content.

    detect_format(path, options=None, *, s3=None) -> (format, compression)
    format_from_name(name) -> (format | None, compression | None)
    looks_pipe_delimited(head) -> bool
    Sniff(path, s3)                    the first bytes of a file, read once per detection

Order:
  1. by extension (case-insensitive): .parquet/.pq (incl. *.snappy.parquet); .csv; .json/.jsonl/
     .ndjson; text formats optionally followed by .gz/.gzip or .zst/.zstd;
  2. when the extension says nothing: by content: Parquet magic ``PAR1``; gzip magic ``1f8b``
     (then the original name stored in the gzip header, or the name without .gz); zstd magic
     ``28b52ffd`` (then the name without .zst); a JSON object on the first line means NDJSON;
     text whose first line has a ``|`` and no ``,`` is pipe-delimited CSV (a Redshift UNLOAD
     part such as ``0000_part_00``). Other comma-separated text needs a .csv name or
     ``source: {format: csv}``.
The mapping's `source:` section (`transforms.source_options.SourceOptions`) can give the format,
compression and delimiter instead. A manifest found among the inputs is reported as ``ndjson``:
discovery (`connectors.discovery`) replaces it by the files it lists. Bytes are read through
`connectors.file_access` (S3: the run's `S3Store`, which fetches a small object whole once).
"""

from __future__ import annotations

import json
import os
import zlib
from typing import TYPE_CHECKING

import pyarrow as pa

from connectors.file_access import open_stream, read_head
from connectors.manifest import MAX_MANIFEST_BYTES, is_manifest_name, parse_manifest
from connectors.source_file import Compression, Format
from moesif_backfill.errors import SourceError
from transforms.source_options import DEFAULT_OPTIONS, SourceOptions

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

SUPPORTED_EXTENSIONS = (
    ".parquet, .pq, .csv, .json, .jsonl, .ndjson "
    "(text formats optionally compressed: .csv.gz, .csv.zst, .jsonl.gz, .ndjson.zst, ...)"
)
SNIFF_BYTES = 64 * 1024

_FORMAT_EXT: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "ndjson",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}
_COMPRESSION_EXT: dict[str, Compression] = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
}
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Sniff:
    """Reads the beginning of one file for detection (S3: through the run's store)."""

    def __init__(self, path: str, s3: S3Store | None) -> None:
        self.path = path
        self.s3 = s3

    def head(self, n: int) -> bytes:
        return read_head(self.path, n, self.s3)

    def decompressed(self, compression: Compression) -> bytes:
        """The first SNIFF_BYTES of the decompressed content (b"" when unreadable)."""
        try:
            with open_stream(self.path, compression, self.s3) as stream:
                data: bytes = stream.read(SNIFF_BYTES)
                return data
        except (OSError, pa.ArrowException, zlib.error, SourceError):
            return b""

    def gzip_inner_name(self) -> str | None:
        """The original file name stored in a gzip header (FNAME), if any."""
        head = self.head(SNIFF_BYTES)
        if len(head) < 10 or head[3] & 0x08 == 0:
            return None
        pos = 10
        if head[3] & 0x04:  # FEXTRA
            if len(head) < pos + 2:
                return None
            pos += 2 + int.from_bytes(head[pos : pos + 2], "little")
        end = head.find(b"\0", pos)
        if end < 0:
            return None
        return os.path.basename(head[pos:end].decode("latin-1"))


def is_manifest_candidate(path: str) -> bool:
    return is_manifest_name(path.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1])


def _is_manifest(sniff: Sniff, head: bytes, opts: SourceOptions) -> bool:
    """A manifest among listed files: a manifest name and the manifest's JSON shape."""
    if opts.manifest is False or not is_manifest_candidate(sniff.path) or not head:
        return False
    if head[:1] not in b"{ \t\r\n\xef":
        return False
    data = sniff.head(MAX_MANIFEST_BYTES + 1)
    return parse_manifest(data, origin=sniff.path, strict=False) is not None


def detect_format(
    path: str, options: SourceOptions | None = None, *, s3: S3Store | None = None
) -> tuple[Format, Compression | None]:
    """Format and compression of a file, by name first, then by content.

    `options` (the mapping's `source:` section; None: the defaults) may fix the format and
    compression. `s3`: the run's S3Store, for s3:// paths.
    """
    opts = options if options is not None else DEFAULT_OPTIONS
    sniff = Sniff(path, s3)
    head = sniff.head(4)
    magic: Compression | None = None
    if head.startswith(_GZIP_MAGIC):
        magic = "gzip"
    elif head.startswith(_ZSTD_MAGIC):
        magic = "zstd"
    if opts.compression != "auto" and magic != (
        None if opts.compression == "none" else opts.compression
    ):
        raise SourceError(
            f"{path}: the mapping's source.compression is {opts.compression}, but the content "
            f"is {f'{magic}-compressed' if magic else 'not compressed'} (first bytes "
            f"{head.hex() or 'empty'}); fix `compression` in the source: section or leave it "
            "out (detected from the content)."
        )
    if _is_manifest(sniff, head, opts):
        return "ndjson", None
    if opts.format is not None:
        return _forced_format(path, head, magic, opts.format)
    fmt, named_comp = format_from_name(os.path.basename(path))
    if fmt is None:
        return _format_from_content(sniff, head, magic, opts)
    if named_comp is not None and magic != named_comp:
        raise SourceError(
            f"{path}: the name says {named_comp}-compressed but the content is not "
            f"{named_comp} (first bytes {head.hex() or 'empty'}); rename the file to match "
            "its content or re-export it."
        )
    if fmt == "parquet" and magic is not None:
        raise SourceError(_compressed_parquet_message(path, magic))
    # A text file named .csv/.jsonl whose content is compressed: trust the content.
    return fmt, magic


def _format_from_content(
    sniff: Sniff, head: bytes, magic: Compression | None, opts: SourceOptions
) -> tuple[Format, Compression | None]:
    path = sniff.path
    if head == _PARQUET_MAGIC:
        return "parquet", None
    if magic is not None:
        inner = sniff.gzip_inner_name() if magic == "gzip" else None
        stem, _ = os.path.splitext(os.path.basename(path))
        for candidate in (inner, stem):
            inner_fmt = format_from_name(candidate)[0] if candidate else None
            if inner_fmt == "parquet":
                raise SourceError(_compressed_parquet_message(path, magic))
            if inner_fmt is not None:
                return inner_fmt, magic
        first = sniff.decompressed(magic)
        if first.startswith(_PARQUET_MAGIC):
            raise SourceError(_compressed_parquet_message(path, magic))
        if _looks_like_ndjson(first):
            return "ndjson", magic
        if _looks_delimited(first, opts):
            return "csv", magic
    else:
        text = sniff.head(SNIFF_BYTES)
        if _looks_like_ndjson(text):
            return "ndjson", None
        if _looks_delimited(text, opts):
            return "csv", None
    raise SourceError(
        f"{path}: cannot tell the file format from its name or content. Supported extensions: "
        f"{SUPPORTED_EXTENSIONS}. Rename the file, leave it out of the inputs, or give the "
        "format in the mapping file, e.g. source: {format: csv, delimiter: ','} "
        "(see docs/warehouse-exports.md)."
    )


def _forced_format(
    path: str, head: bytes, magic: Compression | None, fmt: Format
) -> tuple[Format, Compression | None]:
    """The mapping's source.format, checked against what the content plainly is."""
    if fmt == "parquet":
        if magic is not None:
            raise SourceError(_compressed_parquet_message(path, magic))
        if head != _PARQUET_MAGIC:
            raise SourceError(
                f"{path}: the mapping's source.format is parquet, but the file does not start "
                f"like a Parquet file (first bytes {head.hex() or 'empty'}); fix `format` in "
                "the source: section or leave it out (detected from the name and content)."
            )
    elif head == _PARQUET_MAGIC:
        raise SourceError(
            f"{path}: the file is Parquet, but the mapping's source.format is {fmt}; fix "
            "`format` in the source: section or leave it out (detected from the name and content)."
        )
    return fmt, magic


def _first_line(head: bytes) -> bytes:
    return head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r")


def looks_pipe_delimited(head: bytes) -> bool:
    """Redshift's UNLOAD default: text whose first line has a "|" and no ","."""
    line = _first_line(head)
    return b"|" in line and b"," not in line and b"\0" not in line


def _looks_delimited(head: bytes, opts: SourceOptions) -> bool:
    if b"\0" in _first_line(head):
        return False
    if opts.delimiter is not None:
        return bool(head.strip())
    return looks_pipe_delimited(head)


def format_from_name(name: str) -> tuple[Format | None, Compression | None]:
    base, ext = os.path.splitext(name.lower())
    compression = _COMPRESSION_EXT.get(ext)
    if compression is not None:
        base, ext = os.path.splitext(base)
    fmt = _FORMAT_EXT.get(ext)
    return fmt, (compression if fmt is not None else None)


def _looks_like_ndjson(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return False
    line, newline, _ = text.partition(b"\n")
    if not newline:
        return True  # first line longer than the sniffed bytes: an object start is enough
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _compressed_parquet_message(path: str, compression: Compression) -> str:
    return (
        f"{path}: a {compression}-compressed Parquet file is not supported (Parquet needs random "
        "access and compresses internally); decompress it first."
    )
