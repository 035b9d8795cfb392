"""Manifests: a JSON list of the files an export wrote (Redshift `UNLOAD ... MANIFEST`).

    {"entries": [{"url": "s3://bucket/unload/0000_part_00",
                  "meta": {"content_length": 5956875, "record_count": 100}}, ...],
     "schema": {...}, "meta": {...}}                       # optional, ignored

When a manifest is an input, exactly its entries are read (in sorted order, like all inputs);
each entry's size is checked against `content_length` at discovery and, before anything is
sent, its row count against `record_count` (pipeline.plan).

An entry URL is an ``s3://`` URL, a ``file://`` URL or a local path (absolute, or relative to
the manifest's directory). A *local* manifest with ``s3://`` entries is read from a downloaded
copy when one sits next to it: the longest trailing part of the entry's key that exists under
the manifest's directory (``aws s3 sync s3://bucket/unload/ ./unload/`` keeps the layout),
otherwise from S3.

This module only parses and resolves; `connectors.discovery` reads the manifest (through
`connectors.file_access`, so local files and S3 objects alike) and builds the `SourceFile`s.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from moesif_backfill.errors import SourceError

MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class ManifestEntry:
    url: str
    content_length: int | None
    record_count: int | None


def is_manifest_name(name: str) -> bool:
    """`manifest`, `MANIFEST`, `x.manifest`, `venue_manifest` (Redshift: prefix + "manifest")."""
    return name.lower().endswith("manifest")


def parse_manifest(data: bytes, *, origin: str, strict: bool) -> list[ManifestEntry] | None:
    """The entries of a manifest; None when `data` is not one (only when not `strict`: a file
    that merely has a manifest-like name is then read as data). SourceError otherwise."""
    if len(data) > MAX_MANIFEST_BYTES:
        if not strict:
            return None
        raise SourceError(
            f"{origin}: the manifest is larger than {MAX_MANIFEST_BYTES >> 20} MB; split the "
            "export or list its files directly."
        )
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        if not strict:
            return None
        raise SourceError(
            f"{origin}: not a manifest: the file is not valid JSON ({exc}). A manifest looks "
            'like {"entries": [{"url": "s3://...", "meta": {"record_count": N}}]}.'
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        if not strict:
            return None
        raise SourceError(
            f'{origin}: not a manifest: expected a JSON object with an "entries" list, e.g. '
            '{"entries": [{"url": "s3://...", "meta": {"record_count": N}}]}.'
        )
    if not strict and not all(isinstance(e, dict) and "url" in e for e in doc["entries"]):
        return None
    entries = [_entry(origin, i, raw) for i, raw in enumerate(doc["entries"], start=1)]
    if not entries:
        raise SourceError(f'{origin}: the manifest lists no files ("entries" is empty).')
    urls = [e.url for e in entries]
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise SourceError(f"{origin}: the manifest lists {repeated[0]!r} more than once.")
    return entries


def _entry(origin: str, index: int, raw: Any) -> ManifestEntry:
    where = f"{origin}: manifest entry {index}"
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not raw["url"]:
        raise SourceError(f'{where} has no "url" (expected {{"url": "s3://...", ...}}).')
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise SourceError(f'{where} ({raw["url"]}): "meta" must be an object.')
    return ManifestEntry(
        url=raw["url"],
        content_length=_count(where, raw["url"], meta, "content_length"),
        record_count=_count(where, raw["url"], meta, "record_count"),
    )


def _count(where: str, url: str, meta: dict[str, Any], name: str) -> int | None:
    value = meta.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SourceError(
            f"{where} ({url}): meta.{name} must be a non-negative integer, got {value!r}."
        )
    return value


def resolve_entry(url: str, manifest: str) -> str:
    """Where to read an entry listed in `manifest` (a local path or an s3:// URL)."""
    if url.startswith("file://"):
        return os.path.abspath(unquote(urlsplit(url).path))
    remote_manifest = "://" in manifest
    if "://" in url:
        if remote_manifest or not url.startswith("s3://"):
            return url
        return _local_copy(url, os.path.dirname(manifest)) or url
    if remote_manifest:
        scheme, rest = manifest.split("://", 1)
        return f"{scheme}://" + posixpath.normpath(posixpath.join(posixpath.dirname(rest), url))
    if os.path.isabs(url):
        return os.path.normpath(url)
    return os.path.normpath(os.path.join(os.path.dirname(manifest), url))


def _local_copy(url: str, directory: str) -> str | None:
    """The downloaded copy of an s3:// entry under `directory`, matching as much of its key as
    possible (so that `dt=.../0000_part_00` of two partitions are not confused)."""
    key = url.split("://", 1)[1].split("/", 1)[-1]
    parts = [p for p in key.split("/") if p]
    for start in range(len(parts)):
        candidate = os.path.join(directory, *parts[start:])
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def manifest_root(manifest: str) -> str:
    """The directory a manifest's partition values are taken relative to."""
    if "://" in manifest:
        return manifest.rsplit("/", 1)[0] + "/"
    return os.path.dirname(manifest)
