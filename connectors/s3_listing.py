"""Listing S3 objects: prefixes, globs and single objects, with the rules of local discovery.

    list_objects(client, spec, *, endpoint="") -> list[ObjectInfo]   sorted by key

A prefix (``s3://b/p/``, or ``s3://b/p`` when no object is named exactly ``p``) is recursive;
a glob matches the key after its literal prefix (``*``, ``?`` and ``[...]`` within one path
component, ``**`` any number of components; a glob matching a "directory" takes everything
under it); hidden and bookkeeping names (``_SUCCESS``, ``_committed_*``, ``.x``, ``*.crc``, see
`is_ignored_name`) are skipped below the literal prefix; "directory marker" keys ending in
``/`` are skipped. A single object named exactly is taken as it is. Listing uses the
``list_objects_v2`` paginator (1,000 keys a page): each object's size and ETag come from it,
so nothing else is asked about an object before it is read. `endpoint`: the custom endpoint
as shown in messages ("" for AWS).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connectors.s3_errors import NOT_FOUND, client_error_message, error_code, split_url
from connectors.source_file import is_ignored_name
from moesif_backfill.errors import SourceError


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. `etag` is S3's ETag without its quotes."""

    url: str
    size: int
    etag: str
    last_modified: datetime | None


def list_objects(client: Any, spec: str, *, endpoint: str = "") -> list[ObjectInfo]:
    """Objects `spec` names, sorted by key (see the module docstring for the rules)."""
    lister = _Lister(client, spec, endpoint)
    bucket, key = split_url(spec)
    if glob.has_magic(key):
        return lister.glob(bucket, key)
    if key and not key.endswith("/"):
        exact = lister.exact_object(bucket, key)
        if exact is not None:
            return [exact]
        key += "/"
    return [
        info
        for info in lister.prefix(bucket, key)
        if not _ignored(info.url[5 + len(bucket) + 1 + len(key) :])
    ]


class _Lister:
    def __init__(self, client: Any, spec: str, endpoint: str) -> None:
        self.client = client
        self.spec = spec
        self.endpoint = endpoint

    def _error(self, exc: BaseException, *, listing: bool = True) -> str:
        return client_error_message(self.spec, exc, listing=listing, endpoint=self.endpoint)

    def exact_object(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object named exactly `key`, or None. One listing call (an object sorts before
        every longer key it prefixes); without s3:ListBucket, a HeadObject (s3:GetObject is
        enough)."""
        try:
            response = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        except ClientError as exc:
            if error_code(exc) not in {"AccessDenied", "403"}:
                raise SourceError(self._error(exc)) from exc
            return self.head_object(bucket, key)
        except BotoCoreError as exc:
            raise SourceError(self._error(exc)) from exc
        for item in response.get("Contents", []):
            if item["Key"] == key:
                return object_info(bucket, item)
        return None

    def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise SourceError(
                self._error(exc) + " (reading a single object needs s3:GetObject on it)"
            ) from exc
        except BotoCoreError as exc:
            raise SourceError(self._error(exc, listing=False)) from exc
        return ObjectInfo(
            f"s3://{bucket}/{key}",
            int(response["ContentLength"]),
            str(response.get("ETag", "")).strip('"'),
            response.get("LastModified"),
        )

    def prefix(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
            ):
                found.extend(
                    object_info(bucket, item)
                    for item in page.get("Contents", [])
                    if not item["Key"].endswith("/")
                )
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(self._error(exc)) from exc
        found.sort(key=lambda info: info.url)
        return found

    def glob(self, bucket: str, pattern: str) -> list[ObjectInfo]:
        parts = pattern.rstrip("/").split("/")
        first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        root = "".join(part + "/" for part in parts[:first_magic])
        lead = re.split(r"[*?\[]", parts[first_magic], maxsplit=1)[0]
        wanted = tuple(parts[first_magic:])
        result = []
        for info in self.prefix(bucket, root + lead):
            rel = info.url[5 + len(bucket) + 1 + len(root) :].split("/")
            if not any(is_ignored_name(p) for p in rel) and _glob_match(wanted, tuple(rel)):
                result.append(info)
        return result


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """True when a leading run of `parts` (at least one) matches `pattern` component by
    component: the object itself, or a "directory" it is under, matches the glob. (Memoized
    per call only: nothing is kept across listings.)"""

    @cache
    def ok(i: int, j: int) -> bool:
        if i == len(pattern):
            return j >= 1
        if pattern[i] == "**":
            return ok(i + 1, j) or (j < len(parts) and ok(i, j + 1))
        return j < len(parts) and fnmatchcase(parts[j], pattern[i]) and ok(i + 1, j + 1)

    return ok(0, 0)


def _ignored(rel: str) -> bool:
    return any(is_ignored_name(part) for part in rel.split("/") if part)


def object_info(bucket: str, item: dict[str, Any]) -> ObjectInfo:
    """The `ObjectInfo` of one `Contents` item of a ListObjectsV2 page of `bucket`."""
    return ObjectInfo(
        f"s3://{bucket}/{item['Key']}",
        int(item["Size"]),
        str(item.get("ETag", "")).strip('"'),
        item.get("LastModified"),
    )
