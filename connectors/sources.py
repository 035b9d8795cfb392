"""Local input files: discovery, format detection and the `SourceFile` record.

`discover_sources` turns the inputs given on the command line (files, directories, globs) into a
sorted, de-duplicated list of `SourceFile`. The readers for each format live in
`connectors.readers` (`read_schema`, `iter_batches`).

Format detection, in order:
  1. by extension (case-insensitive): .parquet/.pq (incl. *.snappy.parquet); .csv; .json/.jsonl/
     .ndjson; text formats optionally followed by .gz/.gzip or .zst/.zstd;
  2. when the extension says nothing: by content: Parquet magic ``PAR1``; gzip magic ``1f8b``
     (then the original name stored in the gzip header, or the name without .gz); zstd magic
     ``28b52ffd`` (then the name without .zst); a JSON object on the first line means NDJSON;
     text whose first line has a ``|`` and no ``,`` is pipe-delimited CSV (a Redshift UNLOAD
     part such as ``0000_part_00``). Other comma-separated text needs a .csv name or
     ``source: {format: csv}``.
The mapping's `source:` section (`transforms.source_options.SourceOptions`, passed to
`discover_sources`) can give the format, compression and delimiter instead. Manifests
(`connectors.manifest`) are replaced by the files they list, and Hive-style ``key=value``
directories below an input's root become the file's partition values
(`connectors.partitions`, in `SourceFile.layout`).
"""

from __future__ import annotations

import glob
import json
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import pyarrow as pa

from connectors import storage
from connectors.file_layout import NO_LAYOUT, FileLayout
from connectors.manifest import (
    MAX_MANIFEST_BYTES,
    is_manifest_name,
    manifest_root,
    parse_manifest,
    resolve_entry,
)
from connectors.partitions import partition_root, partitions_of
from moesif_backfill.errors import SourceError
from transforms.source_options import DEFAULT_OPTIONS, SourceOptions

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


def open_input(src: SourceFile) -> pa.NativeFile:
    """Open `src` as a sequential, decompressed byte stream (caller closes it). An S3 object
    is read as it was listed: SourceChangedError if it was replaced since."""
    try:
        return storage.open_stream(
            src.path,
            compression=src.compression,
            buffer_size=IO_BUFFER_BYTES,
            etag=src.etag,
            size=src.size,
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


def discover_sources(
    specs: Sequence[str], options: SourceOptions | None = None
) -> list[SourceFile]:
    """Expand files, directories (recursive) and globs (``**`` allowed) into sorted SourceFiles.

    `options` (the mapping's `source:` section) may fix the format, compression and delimiter.
    A manifest is replaced by the files it lists (with its record counts in `layout`), and
    ``key=value`` directories below each spec's root become `layout.partitions`.

    Raises SourceError when a spec matches nothing or a file's format cannot be determined.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise SourceError("No input given: pass at least one file, directory or glob pattern.")
    opts = options or DEFAULT_OPTIONS
    # detect_format reads the options from here: storage.discover_s3 calls it on its threads.
    with _ACTIVE.lock:
        _ACTIVE.options = opts
        try:
            return _discover(specs, opts)
        finally:
            _ACTIVE.options = DEFAULT_OPTIONS


class _ActiveOptions:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.options = DEFAULT_OPTIONS


_ACTIVE = _ActiveOptions()


def _discover(specs: Sequence[str], opts: SourceOptions) -> list[SourceFile]:
    found: dict[str, SourceFile] = {}
    listed: dict[str, SourceFile] = {}  # files a manifest names: their entry (record count) wins
    for spec in specs:
        if opts.manifest:  # every input given is a manifest
            for src in _manifest_sources(_given_path(spec), opts, strict=True) or []:
                listed.setdefault(src.path, src)
            continue
        if storage.is_s3(spec):  # listing, detection and ETags: connectors.storage
            sources = storage.discover_s3(spec)
        else:
            paths = list(_expand_spec(spec))
            if not paths:
                raise SourceError(_no_match_message(spec))
            sources = [_make_source(p) for p in paths if p not in found and p not in listed]
        root = partition_root(spec)
        for src in sources:
            if src.path in found or src.path in listed:
                continue
            entries = _manifest_sources(src.path, opts, strict=False)
            if entries is not None:
                for entry in entries:
                    listed.setdefault(entry.path, entry)
                continue
            found[src.path] = _with_layout(src, opts, partitions_of(src.path, root))
    found.update(listed)
    return [found[p] for p in sorted(found)]


def _given_path(spec: str) -> str:
    if storage.is_s3(spec):
        return spec
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise SourceError(
            f"Input {spec!r}: source.manifest is true, so every input must be a manifest file; "
            f"{'this is a directory' if os.path.isdir(path) else 'it does not exist'}."
        )
    return path


def _manifest_sources(path: str, opts: SourceOptions, *, strict: bool) -> list[SourceFile] | None:
    """The files the manifest at `path` lists, or None when it is not a manifest."""
    if not strict and (opts.manifest is False or not _is_manifest_candidate(path)):
        return None
    data = _read_head(path, MAX_MANIFEST_BYTES + 1)
    entries = parse_manifest(data, origin=path, strict=strict)
    if entries is None:
        return None
    root = manifest_root(path)
    out = []
    for entry in entries:
        target = resolve_entry(entry.url, path)
        src = _listed_source(path, entry.url, target)
        if entry.content_length is not None and entry.content_length != src.size:
            raise SourceError(
                f"{path}: manifest entry {entry.url}: the file has {src.size} bytes, the "
                f"manifest says {entry.content_length}; the file changed or is incomplete. "
                "Re-run the export (or re-download it)."
            )
        layout = FileLayout(manifest=path, expected_rows=entry.record_count)
        out.append(_with_layout(replace(src, layout=layout), opts, partitions_of(target, root)))
    return out


def _listed_source(manifest: str, url: str, target: str) -> SourceFile:
    shown = url if url == target else f"{url} (read from {target})"
    if storage.is_s3(target):
        found = [s for s in storage.discover_s3(target) if s.path == target]
        if len(found) != 1:
            raise SourceError(f"{manifest}: manifest entry {shown} does not exist.")
        return found[0]
    if not os.path.isfile(target):
        raise SourceError(
            f"{manifest}: manifest entry {shown} does not exist (relative entries are resolved "
            "from the manifest's directory)."
        )
    return _make_source(target)


def _is_manifest_candidate(path: str) -> bool:
    return is_manifest_name(path.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1])


def _is_manifest(path: str, head: bytes, opts: SourceOptions) -> bool:
    """A manifest among listed files: a manifest name and the manifest's JSON shape."""
    if opts.manifest is False or not _is_manifest_candidate(path) or not head:
        return False
    if head[:1] not in b"{ \t\r\n\xef":
        return False
    data = _read_head(path, MAX_MANIFEST_BYTES + 1)
    return parse_manifest(data, origin=path, strict=False) is not None


def _with_layout(
    src: SourceFile, opts: SourceOptions, partitions: tuple[tuple[str, str | None], ...]
) -> SourceFile:
    """`src` with its partition values and, for a CSV whose name does not say .csv and with no
    `source.delimiter`, the delimiter sniffed from its first line ("|" or the default)."""
    delimiter = src.layout.delimiter
    named_csv = _format_from_name(os.path.basename(src.path))[0] == "csv"
    if src.format == "csv" and opts.delimiter is None and delimiter is None and not named_csv:
        head = (
            _sniff_decompressed(src.path, src.compression)
            if src.compression
            else _read_head(src.path, _SNIFF_BYTES)
        )
        delimiter = "|" if _looks_pipe_delimited(head) else None
    if partitions == src.layout.partitions and delimiter == src.layout.delimiter:
        return src
    return replace(src, layout=replace(src.layout, partitions=partitions, delimiter=delimiter))


def detect_format(
    path: str, options: SourceOptions | None = None
) -> tuple[Format, Compression | None]:
    """Format and compression of a file, by name first, then by content.

    `options` (default: those given to the `discover_sources` call running) may fix the
    format and compression. A manifest found among the inputs is reported as ``ndjson``:
    `discover_sources` replaces it by the files it lists.
    """
    opts = options if options is not None else _ACTIVE.options
    head = _read_head(path, 4)
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
    if _is_manifest(path, head, opts):
        return "ndjson", None
    if opts.format is not None:
        return _forced_format(path, head, magic, opts.format)
    fmt, named_comp = _format_from_name(os.path.basename(path))
    if fmt is None:
        return _format_from_content(path, head, magic, opts)
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
    path: str, head: bytes, magic: Compression | None, opts: SourceOptions = DEFAULT_OPTIONS
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
        if _looks_delimited(first, opts):
            return "csv", magic
    else:
        text = _read_head(path, _SNIFF_BYTES)
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


def _looks_pipe_delimited(head: bytes) -> bool:
    """Redshift's UNLOAD default: text whose first line has a "|" and no ","."""
    line = _first_line(head)
    return b"|" in line and b"," not in line and b"\0" not in line


def _looks_delimited(head: bytes, opts: SourceOptions) -> bool:
    if b"\0" in _first_line(head):
        return False
    if opts.delimiter is not None:
        return bool(head.strip())
    return _looks_pipe_delimited(head)


# --------------------------------------------------------------------------------------------
# discovery helpers


def local_data_files(spec: str) -> list[str]:
    """The data files a local input `spec` (file, directory, glob) names, as discovery sees
    them: hidden, '_'-prefixed and *.crc files are not data. Empty when it names none."""
    return list(_expand_spec(spec))


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
    if storage.is_s3(path):
        return storage.read_head(path, n)
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
        with storage.open_stream(path, compression=compression) as stream:
            data: bytes = stream.read(_SNIFF_BYTES)
            return data
    except (OSError, pa.ArrowException, zlib.error, SourceError):
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
