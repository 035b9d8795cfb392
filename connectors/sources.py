"""Local input files: discovery, format detection and the `SourceFile` record.

`discover_sources` turns the inputs given on the command line (files, directories, globs) into a
sorted, de-duplicated list of `SourceFile`. The readers for each format live in
`connectors.readers` (`read_schema`, `iter_batches`).

Format detection, in order:
  1. by extension (case-insensitive): .parquet/.pq (incl. *.snappy.parquet); .csv; .json/.jsonl/
     .ndjson; text formats optionally followed by .gz/.gzip or .zst/.zstd;
  2. when the extension says nothing: by content: Parquet magic ``PAR1``; gzip magic ``1f8b``
     (then the original name stored in the gzip header, or the name without .gz); zstd magic
     ``28b52ffd`` (then the name without .zst); a JSON object on the first line means NDJSON.
CSV is never guessed from content: a CSV needs a .csv name (optionally .gz/.zst after it).
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from connectors import storage
from moesif_backfill.errors import SourceError

Format = Literal["parquet", "csv", "ndjson"]
Compression = Literal["gzip", "zstd"]

SUPPORTED_EXTENSIONS = (
    ".parquet, .pq, .csv, .json, .jsonl, .ndjson "
    "(text formats optionally compressed: .csv.gz, .csv.zst, .jsonl.gz, .ndjson.zst, ...)"
)
IO_BUFFER_BYTES = 1 << 20

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
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class SourceFile:
    """One input file. `path` is absolute, or an s3:// URL (then `etag` is set, mtime_ns 0)."""

    path: str
    format: Format
    compression: Compression | None
    size: int
    mtime_ns: int
    etag: str | None = None

    def identity(self) -> dict[str, int | str]:
        """What a checkpoint stores and compares to notice that the file changed."""
        if self.etag is not None:
            return {"size": self.size, "etag": self.etag}
        return {"size": self.size, "mtime_ns": self.mtime_ns}

    @property
    def key(self) -> str:
        """Stable key for checkpoints: the absolute path."""
        return self.path


def open_input(src: SourceFile) -> pa.NativeFile:
    """Open `src` as a sequential, decompressed byte stream (caller closes it)."""
    try:
        return storage.open_stream(
            src.path, compression=src.compression, buffer_size=IO_BUFFER_BYTES
        )
    except OSError as exc:
        raise SourceError(
            f"{src.path}: cannot open the file ({exc}); check it exists and is readable."
        ) from exc


def one_line(text: object) -> str:
    """An error's text on one line (Arrow's messages span lines; ours are one line)."""
    return " ".join(str(text).split())


def is_ignored_name(name: str) -> bool:
    """Hidden/bookkeeping names skipped inside directories: .x, _SUCCESS, _committed_x, *.crc."""
    return name.startswith((".", "_")) or name.lower().endswith(".crc")


def discover_sources(specs: Sequence[str]) -> list[SourceFile]:
    """Expand files, directories (recursive) and globs (``**`` allowed) into sorted SourceFiles.

    Raises SourceError when a spec matches nothing or a file's format cannot be determined.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise SourceError("No input given: pass at least one file, directory or glob pattern.")
    found: dict[str, SourceFile] = {}
    for spec in specs:
        paths = list(_expand_spec(spec))
        if not paths:
            raise SourceError(_no_match_message(spec))
        for path in paths:
            if path not in found:
                found[path] = _make_source(path)
    return [found[p] for p in sorted(found)]


def detect_format(path: str) -> tuple[Format, Compression | None]:
    """Format and compression of a local file, by name first, then by content."""
    head = _read_head(path, 4)
    magic: Compression | None = None
    if head.startswith(_GZIP_MAGIC):
        magic = "gzip"
    elif head.startswith(_ZSTD_MAGIC):
        magic = "zstd"
    fmt, named_comp = _format_from_name(os.path.basename(path))
    if fmt is None:
        return _format_from_content(path, head, magic)
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
    path: str, head: bytes, magic: Compression | None
) -> tuple[Format, Compression | None]:
    if head == _PARQUET_MAGIC:
        return "parquet", None
    if magic is not None:
        inner = _gzip_inner_name(path) if magic == "gzip" else None
        stem, _ = os.path.splitext(os.path.basename(path))
        for candidate in (inner, stem):
            inner_fmt = _format_from_name(candidate)[0] if candidate else None
            if inner_fmt == "parquet":
                raise SourceError(_compressed_parquet_message(path, magic))
            if inner_fmt is not None:
                return inner_fmt, magic
        first = _sniff_decompressed(path, magic)
        if first.startswith(_PARQUET_MAGIC):
            raise SourceError(_compressed_parquet_message(path, magic))
        if _looks_like_ndjson(first):
            return "ndjson", magic
    elif _looks_like_ndjson(_read_head(path, _SNIFF_BYTES)):
        return "ndjson", None
    raise SourceError(
        f"{path}: cannot tell the file format from its name or content. Supported extensions: "
        f"{SUPPORTED_EXTENSIONS}. Rename the file, or leave it out of the inputs."
    )


# --------------------------------------------------------------------------------------------
# discovery helpers


def _expand_spec(spec: str) -> Iterator[str]:
    if "://" in spec:
        raise SourceError(
            f"Input {spec!r}: only local paths are supported here; give a local path."
        )
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        root = _literal_root(expanded)
        dirs: list[str] = []
        for match in glob.glob(expanded, recursive=True):
            path = os.path.abspath(match)
            rel = os.path.relpath(path, root)
            if any(is_ignored_name(part) for part in rel.split(os.sep) if part not in ("", ".")):
                continue
            if os.path.isdir(path):
                dirs.append(path)
            elif os.path.isfile(path):
                yield path
        walked: list[str] = []  # a "**" pattern matches nested dirs: walk each tree once
        for path in sorted(dirs):
            if not any(path.startswith(w.rstrip(os.sep) + os.sep) for w in walked):
                walked.append(path)
                yield from _walk(path)
    elif os.path.isdir(expanded):
        yield from _walk(os.path.abspath(expanded))
    elif os.path.isfile(expanded):
        yield os.path.abspath(expanded)


def _walk(top: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not is_ignored_name(name) and os.path.isfile(path):
                yield path


def _literal_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split(os.sep)
    literal: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    root = os.sep.join(literal) or ("" if not pattern.startswith(os.sep) else os.sep)
    return os.path.abspath(root or ".")


def _no_match_message(spec: str) -> str:
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        return (
            f"Input pattern {spec!r} matched no data files (hidden, '_'-prefixed and *.crc files "
            "are skipped); check the pattern and quote it so the shell does not expand it."
        )
    if os.path.isdir(expanded):
        return (
            f"Input directory {spec!r} contains no data files (hidden, '_'-prefixed and *.crc "
            "files are skipped); check the path."
        )
    return (
        f"Input {spec!r} does not exist (relative paths are resolved from {os.getcwd()}); "
        "check the path."
    )


def _make_source(path: str) -> SourceFile:
    fmt, compression = detect_format(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file's metadata ({exc}).") from exc
    return SourceFile(path, fmt, compression, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# format detection helpers


def _format_from_name(name: str) -> tuple[Format | None, Compression | None]:
    base, ext = os.path.splitext(name.lower())
    compression = _COMPRESSION_EXT.get(ext)
    if compression is not None:
        base, ext = os.path.splitext(base)
    fmt = _FORMAT_EXT.get(ext)
    return fmt, (compression if fmt is not None else None)


def _read_head(path: str, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file ({exc}); check its permissions.") from exc


def _gzip_inner_name(path: str) -> str | None:
    """The original file name stored in a gzip header (FNAME), if any."""
    head = _read_head(path, _SNIFF_BYTES)
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


def _sniff_decompressed(path: str, compression: Compression) -> bytes:
    try:
        with pa.input_stream(path, compression=compression) as stream:
            data: bytes = stream.read(_SNIFF_BYTES)
            return data
    except (OSError, pa.ArrowException, zlib.error):
        return b""


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
