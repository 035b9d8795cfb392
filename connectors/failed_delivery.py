"""S3 access for `redrive`: list the failed-delivery objects under an error output location,
read one (pinned to its listed ETag), delete one.

    error_location(url) -> Location            s3://bucket/prefix/ (a trailing "/" added)
    list_location(client, loc, endpoint) -> list[ObjectInfo]   every object under it, by key
    read_object(client, info, endpoint) -> bytes               SourceChangedError if replaced
    delete_object(client, info, endpoint) -> None

Everything under the prefix is listed, at any depth, hidden names included (nothing is
skipped silently: an object that is not failed-delivery lines gives rejected lines); only
"directory marker" keys ending in "/" (no content) are left out. Nothing outside the prefix is
listed: `s3://b/errors` is read as `s3://b/errors/`, so `errors-old/` is not matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connectors.s3_errors import client_error_message, error_code, is_s3, split_url
from connectors.s3_listing import ObjectInfo, object_info
from connectors.s3_object import S3Object
from moesif_backfill.errors import ConfigError, SourceError

_CONFIG_CODES = frozenset(
    {"NoSuchBucket", "AccessDenied", "AllAccessDisabled", "403", "Forbidden", "404"}
)


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" (the whole bucket) or ending in "/"
    note: str | None = None  # what was changed in the given URL, to tell the user

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def error_location(url: str) -> Location:
    """The location `url` names, its prefix ending in "/" (ConfigError when not s3://)."""
    if not is_s3(url):
        raise ConfigError(
            f"{url!r}: give the S3 location of the failed deliveries, s3://BUCKET/PREFIX/"
        )
    try:
        bucket, prefix = split_url(url)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    note = None
    if prefix and not prefix.endswith("/"):
        note = (
            f"reading s3://{bucket}/{prefix}/ (a trailing '/' added: keys that merely start "
            f"with {prefix!r}, like {prefix + '-old/'!r}, are not read)"
        )
        prefix += "/"
    return Location(bucket, prefix, note)


def list_location(client: Any, loc: Location, endpoint: str = "") -> list[ObjectInfo]:
    """Every object under `loc`, sorted by key. ConfigError (exit 2) naming the location when
    the bucket does not exist or listing is denied."""
    found: list[ObjectInfo] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/") and not item.get("Size"):
                    continue  # a "directory marker"
                found.append(object_info(loc.bucket, item))
    except ClientError as exc:
        message = client_error_message(loc.url, exc, listing=True, endpoint=endpoint)
        if error_code(exc) in _CONFIG_CODES:
            raise ConfigError(message) from None
        raise SourceError(message) from exc
    except BotoCoreError as exc:
        raise SourceError(
            client_error_message(loc.url, exc, listing=True, endpoint=endpoint)
        ) from exc
    found.sort(key=lambda info: info.url)
    return found


def read_object(client: Any, info: ObjectInfo, endpoint: str = "") -> bytes:
    """The bytes of the listed version of the object (SourceChangedError if it was replaced)."""
    if info.size == 0:
        return b""
    obj = S3Object(client, info.url, etag=info.etag or None, size=info.size, endpoint=endpoint)
    try:
        return obj.read_range(0, info.size)
    finally:
        obj.close()


def delete_object(client: Any, info: ObjectInfo, endpoint: str = "") -> None:
    """Delete the object (SourceError saying which permission is missing on failure)."""
    bucket, key = split_url(info.url)
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        message = client_error_message(info.url, exc, listing=False, endpoint=endpoint)
        raise SourceError(
            f"could not delete it after every action was delivered: {message} (--delete-after "
            f"needs s3:DeleteObject on arn:aws:s3:::{bucket}/{key}); nothing is lost, delete it "
            "yourself or rerun"
        ) from exc


__all__ = ["Location", "delete_object", "error_location", "list_location", "read_object"]
