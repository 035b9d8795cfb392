"""Discovery: the inputs given on the command line -> a sorted, de-duplicated list of `SourceFile`.

    discover_sources(specs, options=None, *, s3=None) -> list[SourceFile]

Local files, directories (recursive) and globs (`connectors.local_files`), and S3 prefixes,
globs and objects (listed once by the run's `S3Store`, `connectors.s3_listing`; formats
detected on a few threads, each small object fetched whole once and kept for its readers).
Formats: `connectors.formats`. Manifests (`connectors.manifest`) are replaced by the files they
list, and Hive-style ``key=value`` directories below an input's root become the file's
partition values (`connectors.partitions`, in `SourceFile.layout`). The readers for each format
live in `connectors.readers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from connectors.exclude import all_excluded_message, is_excluded
from connectors.file_access import need_store
from connectors.file_layout import FileLayout
from connectors.formats import (
    SNIFF_BYTES,
    Sniff,
    detect_format,
    format_from_name,
    is_manifest_candidate,
    looks_pipe_delimited,
)
from connectors.local_files import expand_spec, make_source, no_match_message
from connectors.manifest import MAX_MANIFEST_BYTES, manifest_root, parse_manifest, resolve_entry
from connectors.partitions import partition_root, partitions_of
from connectors.s3_errors import is_s3
from connectors.s3_listing import ObjectInfo
from connectors.source_file import SourceFile
from moesif_backfill.errors import SourceError
from transforms.source_options import DEFAULT_OPTIONS, SourceOptions

if TYPE_CHECKING:
    from connectors.s3_store import S3Store

_DETECT_WORKERS = 16


def discover_sources(
    specs: Sequence[str],
    options: SourceOptions | None = None,
    *,
    s3: S3Store | None = None,
    exclude: Sequence[str] = (),
) -> list[SourceFile]:
    """Expand files, directories (recursive), globs (``**`` allowed) and s3:// inputs into
    sorted SourceFiles.

    `options` (the mapping's `source:` section) may fix the format, compression and delimiter.
    A manifest is replaced by the files it lists (with its record counts in `layout`), and
    ``key=value`` directories below each spec's root become `layout.partitions`. `s3`: the
    run's S3Store, needed for s3:// inputs. `exclude`: glob patterns of files to leave out
    (`connectors.exclude`), applied before formats are detected; not to a manifest's entries.

    Raises SourceError when a spec matches nothing or a file's format cannot be determined.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise SourceError("No input given: pass at least one file, directory or glob pattern.")
    return _Discovery(options or DEFAULT_OPTIONS, s3, tuple(exclude)).run(specs)


class _Discovery:
    def __init__(self, opts: SourceOptions, s3: S3Store | None, exclude: tuple[str, ...]) -> None:
        self.opts = opts
        self.s3 = s3
        self.exclude = exclude

    def run(self, specs: Sequence[str]) -> list[SourceFile]:
        opts = self.opts
        found: dict[str, SourceFile] = {}
        listed: dict[
            str, SourceFile
        ] = {}  # files a manifest names: their entry (record count) wins
        for spec in specs:
            if opts.manifest:  # every input given is a manifest
                for src in self.manifest_sources(_given_path(spec), strict=True) or []:
                    listed.setdefault(src.path, src)
                continue
            root = partition_root(spec)
            if is_s3(spec):
                sources = self.discover_s3(spec, root)
            else:
                paths = list(expand_spec(spec))
                if not paths:
                    raise SourceError(no_match_message(spec))
                paths = [p for p in paths if not is_excluded(p, root, self.exclude)]
                if not paths:
                    raise SourceError(all_excluded_message(spec, self.exclude))
                sources = [
                    make_source(p, opts) for p in paths if p not in found and p not in listed
                ]
            for src in sources:
                if src.path in found or src.path in listed:
                    continue
                entries = self.manifest_sources(src.path, strict=False)
                if entries is not None:
                    for entry in entries:
                        listed.setdefault(entry.path, entry)
                    continue
                found[src.path] = self.with_layout(src, partitions_of(src.path, root))
        found.update(listed)
        return [found[p] for p in sorted(found)]

    def discover_s3(self, spec: str, root: str | None = None) -> list[SourceFile]:
        """The objects `spec` names (one listing), formats detected on a few threads. `root`:
        the input's root, for --exclude (None: a manifest's entry, never excluded)."""
        store = need_store(spec, self.s3)
        objects = store.list(spec)
        if not objects:
            raise SourceError(
                f"Input {spec!r} matched no data objects (hidden, '_'-prefixed and *.crc "
                "objects are skipped); check the bucket, the prefix and the pattern."
            )
        if root is not None and self.exclude:
            objects = [o for o in objects if not is_excluded(o.url, root, self.exclude)]
            if not objects:
                raise SourceError(all_excluded_message(spec, self.exclude))

        def make(info: ObjectInfo) -> SourceFile:
            fmt, compression = detect_format(info.url, self.opts, s3=store)
            return SourceFile(info.url, fmt, compression, info.size, 0, etag=info.etag or None)

        if len(objects) == 1:
            return [make(objects[0])]
        with ThreadPoolExecutor(min(_DETECT_WORKERS, len(objects)), "s3-detect") as pool:
            return list(pool.map(make, objects))

    def manifest_sources(self, path: str, *, strict: bool) -> list[SourceFile] | None:
        """The files the manifest at `path` lists, or None when it is not a manifest."""
        opts = self.opts
        if not strict and (opts.manifest is False or not is_manifest_candidate(path)):
            return None
        data = Sniff(path, self.s3).head(MAX_MANIFEST_BYTES + 1)
        entries = parse_manifest(data, origin=path, strict=strict)
        if entries is None:
            return None
        root = manifest_root(path)
        out = []
        for entry in entries:
            target = resolve_entry(entry.url, path)
            src = self.listed_source(path, entry.url, target)
            if entry.content_length is not None and entry.content_length != src.size:
                raise SourceError(
                    f"{path}: manifest entry {entry.url}: the file has {src.size} bytes, the "
                    f"manifest says {entry.content_length}; the file changed or is incomplete. "
                    "Re-run the export (or re-download it)."
                )
            layout = FileLayout(manifest=path, expected_rows=entry.record_count)
            out.append(self.with_layout(replace(src, layout=layout), partitions_of(target, root)))
        return out

    def listed_source(self, manifest: str, url: str, target: str) -> SourceFile:
        shown = url if url == target else f"{url} (read from {target})"
        if is_s3(target):
            found = [s for s in self.discover_s3(target) if s.path == target]
            if len(found) != 1:
                raise SourceError(f"{manifest}: manifest entry {shown} does not exist.")
            return found[0]
        if not os.path.isfile(target):
            raise SourceError(
                f"{manifest}: manifest entry {shown} does not exist (relative entries are "
                "resolved from the manifest's directory)."
            )
        return make_source(target, self.opts)

    def with_layout(
        self, src: SourceFile, partitions: tuple[tuple[str, str | None], ...]
    ) -> SourceFile:
        """`src` with its partition values and, for a CSV whose name does not say .csv and with
        no `source.delimiter`, the delimiter sniffed from its first line ("|" or the default)."""
        delimiter = src.layout.delimiter
        named_csv = format_from_name(os.path.basename(src.path))[0] == "csv"
        if (
            src.format == "csv"
            and self.opts.delimiter is None
            and delimiter is None
            and not named_csv
        ):
            sniff = Sniff(src.path, self.s3)
            head = (
                sniff.decompressed(src.compression) if src.compression else sniff.head(SNIFF_BYTES)
            )
            delimiter = "|" if looks_pipe_delimited(head) else None
        if partitions == src.layout.partitions and delimiter == src.layout.delimiter:
            return src
        return replace(src, layout=replace(src.layout, partitions=partitions, delimiter=delimiter))


def _given_path(spec: str) -> str:
    if is_s3(spec):
        return spec
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise SourceError(
            f"Input {spec!r}: source.manifest is true, so every input must be a manifest file; "
            f"{'this is a directory' if os.path.isdir(path) else 'it does not exist'}."
        )
    return path
