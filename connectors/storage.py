"""One small interface over local files and S3 objects (``s3://bucket/key``).

    is_s3(path) -> bool
    configure_s3(*, endpoint_url=None, region=None, session=None)    process-wide settings
    list_s3(spec) -> list[ObjectInfo]          s3://b/prefix/, s3://b/prefix/*.parquet, s3://b/key
    discover_s3(spec) -> list[SourceFile]      list_s3 + format detection (a few in parallel)
    open_random_access(path) -> pa.NativeFile  seekable (Parquet footers and column chunks)
    open_stream(path, *, compression, buffer_size) -> pa.NativeFile   sequential, decompressed
    open_parquet(path, **kwargs) -> pq.ParquetFile                     closes its file on close()
    read_head(path, n) -> bytes                first bytes, for content sniffing
    prefetch_hint(paths, index)                start reading paths[index + 1] in the background

Listing uses boto3 (``list_objects_v2`` paginator: any number of objects, sorted by key); reading
uses ``pyarrow.fs.S3FileSystem`` built from the credentials boto3 resolves through its standard
chain (environment, profile, SSO, instance/task role), or from the boto3 session given to
`configure_s3` (e.g. ``AwsCredentials.get_boto3_session()`` from a prefect-aws block). Objects are
read in ranged GETs of at most ``S3_STREAM_BUFFER_BYTES`` (sequential) or the reader's buffer
size (Parquet): memory stays bounded whatever the object's size; nothing is downloaded whole.

Endpoint: ``configure_s3(endpoint_url=...)`` (the CLI's ``--s3-endpoint-url``), else the
environment variable ``MOESIF_BACKFILL_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (boto3's own variables, passed on to pyarrow too), else AWS. Region: on AWS
the bucket's own region (from the listing, or asked with HeadBucket), so a bucket in another
region than the Firehose stream works; with a custom endpoint the configured region, boto3's, or
us-east-1.

Listing rules match local discovery (`connectors.sources`): a prefix (``s3://b/p/`` or ``s3://b/p``
when no object is named exactly ``p``) is recursive; a glob matches the key after its literal
prefix (``*``, ``?`` and ``[...]`` within one path component, ``**`` any number of components;
a glob matching a "directory" takes everything under it); hidden and bookkeeping names
(``_SUCCESS``, ``_committed_*``, ``.x``, ``*.crc``, see `is_ignored_name`) are skipped below the
literal prefix; "directory marker" keys ending in ``/`` are skipped. A single object named
exactly is taken as it is.

Errors are `SourceError` naming the URL and, for access denied, the permission to grant; they
never contain credentials.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from connectors import sources
from moesif_backfill.errors import SourceError

__all__ = [
    "ENDPOINT_ENV",
    "PREFETCH_BYTES",
    "S3_STREAM_BUFFER_BYTES",
    "ObjectInfo",
    "Prefetcher",
    "configure_s3",
    "discover_s3",
    "is_s3",
    "list_s3",
    "open_parquet",
    "open_random_access",
    "open_stream",
    "prefetch_hint",
    "read_head",
]

ENDPOINT_ENV = "MOESIF_BACKFILL_S3_ENDPOINT_URL"
#: Ranged GET size (and buffer) for sequential reads of S3 objects.
S3_STREAM_BUFFER_BYTES = 8 << 20
#: What the prefetcher holds at most: the beginning (and a Parquet footer) of the next object.
PREFETCH_BYTES = 8 << 20
LOCAL_BUFFER_BYTES = 1 << 20
_DETECT_WORKERS = 16
_HEAD_CACHE_ENTRIES = 64
_HEAD_CACHE_MAX_BYTES = 128 << 10  # format detection reads up to 64 KiB
_FS_CACHE_ENTRIES = 8
_PARQUET_MAGIC = b"PAR1"
_AWS_ERROR = re.compile(r"AWS Error (?:\[code \d+\]: )?([A-Z_]+)")


def is_s3(path: str) -> bool:
    """True for ``s3://...`` URLs (any case of the scheme)."""
    return isinstance(path, str) and path[:5].lower() == "s3://"


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. `etag` is S3's ETag without its quotes."""

    url: str
    size: int
    etag: str
    last_modified: datetime | None


# --------------------------------------------------------------------------------------------
# settings, sessions, clients, filesystems


@dataclass(frozen=True)
class _Settings:
    endpoint_url: str | None = None
    region: str | None = None
    session: Any = None  # a boto3.session.Session, or None for boto3's standard chain


_lock = threading.RLock()
_settings = _Settings()
_state: dict[str, Any] = {}  # "session", "client": built lazily from _settings
_bucket_regions: dict[str, str] = {}
_filesystems: OrderedDict[tuple[str, str, str], pafs.S3FileSystem] = OrderedDict()
_heads: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()  # url -> (first bytes, whole obj)


def configure_s3(
    *, endpoint_url: str | None = None, region: str | None = None, session: Any = None
) -> None:
    """Set the S3 endpoint and region for this process (None: from the environment/boto3).

    `session`: a boto3 Session whose credentials to use instead of boto3's standard chain (for
    a prefect-aws ``AwsCredentials`` block: ``block.get_boto3_session()``). Clears every cache
    (clients, filesystems, prefetched data).
    """
    global _settings  # noqa: PLW0603 - process-wide settings are the point of this function
    with _lock:
        _settings = _Settings(endpoint_url or None, region or None, session)
        _state.clear()
        _bucket_regions.clear()
        _filesystems.clear()
        _heads.clear()
    _PREFETCHER.clear()


def _endpoint_url() -> str | None:
    for value in (
        _settings.endpoint_url,
        os.environ.get(ENDPOINT_ENV),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return value.rstrip("/")
    return None


def _shown_endpoint() -> str:
    """The custom endpoint for messages (user/password parts removed), or ''."""
    endpoint = _endpoint_url()
    if not endpoint:
        return ""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host


def _session() -> Any:
    with _lock:
        if "session" not in _state:
            _state["session"] = _settings.session or boto3.session.Session()
        return _state["session"]


def _client() -> Any:
    with _lock:
        if "client" not in _state:
            config = Config(
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=_DETECT_WORKERS * 2,
            )
            _state["client"] = _session().client(
                "s3", endpoint_url=_endpoint_url(), region_name=_settings.region, config=config
            )
        return _state["client"]


def _credentials(url: str) -> tuple[str, str, str | None]:
    try:
        creds = _session().get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except BotoCoreError as exc:
        raise SourceError(f"{url}: cannot load AWS credentials ({type(exc).__name__}).") from exc
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise SourceError(_no_credentials_message(url))
    return frozen.access_key, frozen.secret_key, frozen.token or None


def _no_credentials_message(url: str) -> str:
    return (
        f"{url}: no AWS credentials found to read it; configure boto3's standard chain "
        "(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, SSO, or an instance/task "
        "role)."
    )


def _region_for(bucket: str) -> str:
    """The region to sign requests for `bucket` with."""
    if _endpoint_url():
        return _settings.region or _session().region_name or "us-east-1"
    with _lock:
        known = _bucket_regions.get(bucket)
    if known:
        return known
    region = None
    try:
        response = _client().head_bucket(Bucket=bucket)
        region = _region_header(response)
    except ClientError as exc:  # S3 names the region even when it refuses the request
        region = _region_header(exc.response)
    except BotoCoreError:
        region = None
    region = region or _settings.region or _session().region_name or "us-east-1"
    with _lock:
        _bucket_regions[bucket] = region
    return region


def _region_header(response: Any) -> str | None:
    headers = (response or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    region = headers.get("x-amz-bucket-region")
    return str(region) if region else None


def _filesystem(url: str) -> pafs.S3FileSystem:
    """The pyarrow S3 filesystem for `url`'s bucket (cached per region, endpoint, credentials).

    boto3's frozen credentials are asked for each time (cheap), so refreshed temporary
    credentials (assumed roles, SSO) give a new filesystem instead of expired requests.
    """
    bucket, _ = _split(url)
    access, secret, token = _credentials(url)
    region = _region_for(bucket)
    endpoint = _endpoint_url() or ""
    digest = hashlib.sha256("\0".join([access, secret, token or ""]).encode()).hexdigest()
    key = (region, endpoint, digest)
    with _lock:
        fs = _filesystems.get(key)
        if fs is not None:
            _filesystems.move_to_end(key)
            return fs
    kwargs: dict[str, Any] = {
        "access_key": access,
        "secret_key": secret,
        "session_token": token,
        "region": region,
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["scheme"] = parts.scheme or "https"
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
    try:
        fs = pafs.S3FileSystem(**kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{url}: cannot set up S3 access ({_arrow_code(exc)}).") from exc
    with _lock:
        _filesystems[key] = fs
        while len(_filesystems) > _FS_CACHE_ENTRIES:
            _filesystems.popitem(last=False)
    return fs


# --------------------------------------------------------------------------------------------
# URLs and errors


def _split(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); SourceError for a malformed URL."""
    if not is_s3(url):
        raise SourceError(f"{url!r} is not an S3 URL (expected s3://bucket/key).")
    bucket, _, key = url[5:].partition("/")
    if not bucket or any(c.isspace() or c in "?#*[" for c in bucket):
        raise SourceError(
            f"Input {url!r}: not a valid S3 URL; expected s3://bucket/prefix/, "
            "s3://bucket/prefix/*.parquet or s3://bucket/key."
        )
    return bucket, key


def _arrow_path(url: str) -> str:
    bucket, key = _split(url)
    return f"{bucket}/{key}"


def _client_error_message(url: str, exc: BaseException, *, listing: bool) -> str:
    bucket, key = _split(url)
    at = f" at {_shown_endpoint()}" if _shown_endpoint() else ""
    if isinstance(exc, NoCredentialsError):
        return _no_credentials_message(url)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return (
            f"{url}: cannot connect to the S3 endpoint{at}; check the network, proxy settings "
            "and --s3-endpoint-url."
        )
    if isinstance(exc, ReadTimeoutError):
        return f"{url}: S3{at} did not answer in time; rerun later."
    if not isinstance(exc, ClientError):
        return f"{url}: cannot {'list' if listing else 'read'} it ({type(exc).__name__})."
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return _code_message(url, bucket, key, code, listing=listing, at=at)


def _code_message(url: str, bucket: str, key: str, code: str, *, listing: bool, at: str) -> str:
    if code in {"NoSuchBucket", "NO_SUCH_BUCKET"}:
        return f"{url}: the bucket {bucket!r} does not exist{at} (NoSuchBucket); check the URL."
    if code in {"AccessDenied", "ACCESS_DENIED", "AllAccessDisabled", "403", "Forbidden"}:
        if listing:
            need = f"s3:ListBucket on arn:aws:s3:::{bucket}"
        else:
            need = (
                f"s3:GetObject on arn:aws:s3:::{bucket}/{key} (S3 also answers AccessDenied "
                "for a missing object when s3:ListBucket is not granted)"
            )
        return (
            f"{url}: access denied ({code}); the AWS credentials in use need {need}, and a "
            "bucket policy or KMS key policy that allows it."
        )
    if code in {"NoSuchKey", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "404", "NotFound"}:
        return (
            f"{url}: the object does not exist{at} (deleted or renamed since it was listed?); "
            "check the URL or list the inputs again."
        )
    if code in {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "INVALID_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH",
        "EXPIRED_TOKEN",
    }:
        return (
            f"{url}: the AWS credentials were rejected ({code}); check the profile, environment "
            "variables or role in use, or refresh an expired session."
        )
    if code in {"NETWORK_CONNECTION", "INTERNAL_FAILURE"}:
        return f"{url}: cannot reach the S3 endpoint{at} ({code}); check the network and rerun."
    if code in {"SlowDown", "ServiceUnavailable", "InternalError", "SLOW_DOWN", "503", "500"}:
        return f"{url}: S3{at} is throttling or unavailable ({code}); rerun later."
    action = "list objects under it" if listing else "read it"
    return f"{url}: cannot {action} ({code or 'unknown S3 error'})."


def _arrow_code(exc: BaseException) -> str:
    m = _AWS_ERROR.search(str(exc))
    return m.group(1) if m else type(exc).__name__


def _arrow_error(url: str, exc: BaseException) -> SourceError:
    bucket, key = _split(url)
    at = f" at {_shown_endpoint()}" if _shown_endpoint() else ""
    code = "NO_SUCH_KEY" if isinstance(exc, FileNotFoundError) else _arrow_code(exc)
    if code == "OSError" and "403" in str(exc):
        code = "ACCESS_DENIED"
    return SourceError(_code_message(url, bucket, key, code, listing=False, at=at))


# --------------------------------------------------------------------------------------------
# listing


def list_s3(spec: str) -> list[ObjectInfo]:
    """Objects `spec` names, sorted by key (see the module docstring for the rules)."""
    bucket, key = _split(spec)
    if glob.has_magic(key):
        return _list_glob(spec, bucket, key)
    if key and not key.endswith("/"):
        exact = _exact_object(spec, bucket, key)
        if exact is not None:
            return [exact]
        key += "/"
    return [
        info
        for info in _list_prefix(spec, bucket, key)
        if not _ignored(info.url[5 + len(bucket) + 1 + len(key) :])
    ]


def _exact_object(spec: str, bucket: str, key: str) -> ObjectInfo | None:
    """The object named exactly `key`, or None. One listing call (an object sorts before every
    longer key it prefixes); without s3:ListBucket, a HeadObject (s3:GetObject is enough)."""
    try:
        response = _client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except ClientError as exc:
        if _code(exc) not in {"AccessDenied", "403"}:
            raise SourceError(_client_error_message(spec, exc, listing=True)) from exc
        return _head_object(spec, bucket, key)
    except BotoCoreError as exc:
        raise SourceError(_client_error_message(spec, exc, listing=True)) from exc
    _remember_region(bucket, response)
    for item in response.get("Contents", []):
        if item["Key"] == key:
            return _info(bucket, item)
    return None


def _head_object(spec: str, bucket: str, key: str) -> ObjectInfo | None:
    try:
        response = _client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise SourceError(
            _client_error_message(spec, exc, listing=True)
            + " (reading a single object needs s3:GetObject on it)"
        ) from exc
    except BotoCoreError as exc:
        raise SourceError(_client_error_message(spec, exc, listing=False)) from exc
    return ObjectInfo(
        f"s3://{bucket}/{key}",
        int(response["ContentLength"]),
        str(response.get("ETag", "")).strip('"'),
        response.get("LastModified"),
    )


def _list_prefix(spec: str, bucket: str, prefix: str) -> list[ObjectInfo]:
    found: list[ObjectInfo] = []
    try:
        paginator = _client().get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
        ):
            _remember_region(bucket, page)
            found.extend(
                _info(bucket, item)
                for item in page.get("Contents", [])
                if not item["Key"].endswith("/")
            )
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(_client_error_message(spec, exc, listing=True)) from exc
    found.sort(key=lambda info: info.url)
    return found


def _list_glob(spec: str, bucket: str, pattern: str) -> list[ObjectInfo]:
    parts = pattern.rstrip("/").split("/")
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = "".join(part + "/" for part in parts[:first_magic])
    lead = re.split(r"[*?\[]", parts[first_magic], maxsplit=1)[0]
    wanted = tuple(parts[first_magic:])
    result = []
    for info in _list_prefix(spec, bucket, root + lead):
        rel = info.url[5 + len(bucket) + 1 + len(root) :].split("/")
        if not any(sources.is_ignored_name(p) for p in rel) and _glob_match(wanted, tuple(rel)):
            result.append(info)
    return result


@cache
def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """True when a leading run of `parts` (at least one) matches `pattern` component by
    component: the object itself, or a "directory" it is under, matches the glob."""

    def ok(i: int, j: int) -> bool:
        if i == len(pattern):
            return j >= 1
        if pattern[i] == "**":
            return ok(i + 1, j) or (j < len(parts) and ok(i, j + 1))
        return j < len(parts) and fnmatchcase(parts[j], pattern[i]) and ok(i + 1, j + 1)

    return ok(0, 0)


def _ignored(rel: str) -> bool:
    return any(sources.is_ignored_name(part) for part in rel.split("/") if part)


def _info(bucket: str, item: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        f"s3://{bucket}/{item['Key']}",
        int(item["Size"]),
        str(item.get("ETag", "")).strip('"'),
        item.get("LastModified"),
    )


def _remember_region(bucket: str, response: Any) -> None:
    region = _region_header(response)
    if region and not _endpoint_url():
        with _lock:
            _bucket_regions[bucket] = region


def _code(exc: ClientError) -> str:
    response: Any = exc.response
    code = response.get("Error", {}).get("Code")
    return str(code or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def discover_s3(spec: str) -> list[sources.SourceFile]:
    """`list_s3` + format detection (by name, else by content), as SourceFiles with ETags."""
    objects = list_s3(spec)
    if not objects:
        raise SourceError(
            f"Input {spec!r} matched no data objects (hidden, '_'-prefixed and *.crc objects "
            "are skipped); check the bucket, the prefix and the pattern."
        )

    with _lock:  # detect from the objects as listed now, not from bytes read earlier
        for info in objects:
            _heads.pop(info.url, None)

    def make(info: ObjectInfo) -> sources.SourceFile:
        fmt, compression = sources.detect_format(info.url)
        return sources.SourceFile(info.url, fmt, compression, info.size, 0, etag=info.etag or None)

    if len(objects) == 1:
        return [make(objects[0])]
    with ThreadPoolExecutor(min(_DETECT_WORKERS, len(objects)), "s3-detect") as pool:
        return list(pool.map(make, objects))


# --------------------------------------------------------------------------------------------
# reading


def read_head(path: str, n: int) -> bytes:
    """The first `n` bytes (fewer for a shorter file). S3: one ranged GET, remembered for the
    next calls on the same object (format detection asks several times)."""
    if not is_s3(path):
        try:
            with open(path, "rb") as f:
                return f.read(n)
        except OSError as exc:
            raise SourceError(
                f"{path}: cannot read the file ({exc}); check its permissions."
            ) from exc
    with _lock:
        cached = _heads.get(path)
    if cached is not None and (len(cached[0]) >= n or cached[1]):
        return cached[0][:n]
    prefetched = _PREFETCHER.peek(path)
    if prefetched is not None and (len(prefetched.head) >= n or prefetched.whole):
        return prefetched.head[:n]
    bucket, key = _split(path)
    try:
        response = _client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(n, 1) - 1}")
        data: bytes = response["Body"].read()
    except ClientError as exc:
        if _code(exc) in {"InvalidRange", "416"}:
            data = b""  # an empty object
        else:
            raise SourceError(_client_error_message(path, exc, listing=False)) from exc
    except BotoCoreError as exc:
        raise SourceError(_client_error_message(path, exc, listing=False)) from exc
    if len(data) <= _HEAD_CACHE_MAX_BYTES:
        with _lock:
            _heads[path] = (data, len(data) < n)
            while len(_heads) > _HEAD_CACHE_ENTRIES:
                _heads.popitem(last=False)
    return data[:n]


def open_random_access(path: str) -> pa.NativeFile:
    """A seekable file (caller closes it). Local: an OS file; S3: ranged GETs on demand,
    served from the prefetched beginning/footer when `prefetch_hint` read them already."""
    if not is_s3(path):
        return pa.OSFile(path, "r")
    prefetched = _PREFETCHER.take(path)
    if prefetched is not None:
        return pa.PythonFile(_CachedObject(path, prefetched, stream=False), mode="r")
    return _open_s3_file(path)


def open_stream(
    path: str, *, compression: str | None = None, buffer_size: int = LOCAL_BUFFER_BYTES
) -> pa.NativeFile:
    """A sequential, decompressed byte stream (caller closes it). S3 objects are read in
    ranged GETs of max(buffer_size, S3_STREAM_BUFFER_BYTES); local files as before
    (OSError for the caller to explain)."""
    if not is_s3(path):
        return pa.input_stream(path, compression=compression, buffer_size=buffer_size)
    prefetched = _PREFETCHER.take(path)
    raw: pa.NativeFile
    if prefetched is not None:
        raw = pa.PythonFile(_CachedObject(path, prefetched, stream=True), mode="r")
    else:
        raw = _open_s3_file(path)
    return pa.input_stream(
        raw, compression=compression, buffer_size=max(buffer_size, S3_STREAM_BUFFER_BYTES)
    )


def open_parquet(path: str, **kwargs: Any) -> pq.ParquetFile:
    """``pq.ParquetFile`` over `open_random_access(path)` that closes the file when it is
    closed (ParquetFile leaves a file it was given open otherwise)."""
    source = open_random_access(path)
    try:
        pf = pq.ParquetFile(source, **kwargs)
    except BaseException:
        source.close()
        raise
    pf._close_source = True  # ParquetFile.close() then closes `source` too
    return pf


def _open_s3_file(path: str) -> pa.NativeFile:
    fs = _filesystem(path)
    try:
        return fs.open_input_file(_arrow_path(path))
    except (OSError, pa.ArrowException) as exc:
        raise _arrow_error(path, exc) from exc


# --------------------------------------------------------------------------------------------
# prefetching the next object


@dataclass(frozen=True)
class _Prefetched:
    size: int
    head: bytes  # bytes [0, len(head))
    tail: bytes  # bytes [size - len(tail), size): a Parquet footer, or b""

    @property
    def whole(self) -> bool:
        return len(self.head) >= self.size


class _CachedObject(io.RawIOBase):
    """An S3 object whose beginning (and Parquet footer) are in memory; the rest is fetched
    with ranged GETs through pyarrow, opened only when a read needs it. As a stream, the
    beginning is let go once read past."""

    def __init__(self, url: str, data: _Prefetched, *, stream: bool) -> None:
        super().__init__()
        self._url = url
        self._size = data.size
        self._head = data.head
        self._tail = data.tail
        self._tail_start = data.size - len(data.tail)
        self._stream = stream
        self._pos = 0
        self._file: pa.NativeFile | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"{self._url}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        start = self._pos
        end = self._size if size is None or size < 0 else min(self._size, start + size)
        pieces: list[bytes] = []
        pos = start
        while pos < end:
            if pos < len(self._head):
                piece = self._head[pos : min(end, len(self._head))]
            elif self._tail and pos >= self._tail_start:
                piece = self._tail[pos - self._tail_start : end - self._tail_start]
            else:
                stop = min(end, self._tail_start) if self._tail else end
                piece = self._remote().read_at(stop - pos, pos)
            if not piece:
                break
            pieces.append(piece)
            pos += len(piece)
        self._pos = pos
        if self._stream and pos >= len(self._head):
            self._head = b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _remote(self) -> pa.NativeFile:
        if self._file is None:
            self._file = _open_s3_file(self._url)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._head = self._tail = b""
        super().close()


class Prefetcher:
    """Reads the beginning of the next S3 object in a background thread.

    At most one object ahead and at most `budget` bytes held (plus what readers that opened
    the object still reference). `hint(paths, index)` says file `index` is being processed
    now; `take(url)` hands the prefetched bytes to a reader (waiting for a read in flight,
    which does the same requests the reader would), or None.
    """

    def __init__(self, budget: int = PREFETCH_BYTES) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._url: str | None = None
        self._future: Future[_Prefetched] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def hint(self, paths: Sequence[str], index: int) -> None:
        following = paths[index + 1] if 0 <= index + 1 < len(paths) else None
        if following is None or not is_s3(following):
            self.clear()
            return
        with self._lock:
            if self._url == following:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, "s3-prefetch")
            self._url = following
            self._future = self._pool.submit(self._fetch, following)

    def clear(self) -> None:
        with self._lock:
            self._url, self._future = None, None

    def peek(self, url: str) -> _Prefetched | None:
        """The prefetched data for `url` if it is already there (never waits)."""
        with self._lock:
            future = self._future if self._url == url else None
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()

    def take(self, url: str) -> _Prefetched | None:
        with self._lock:
            future = self._future if self._url == url else None
        if future is None:
            return None
        try:
            return future.result()
        except Exception:
            return None  # the reader's own open reports the problem

    def _fetch(self, url: str) -> _Prefetched:
        with self._lock:
            if self._url != url:  # superseded while queued
                raise _Superseded
        with _open_s3_file(url) as f:
            size = int(f.size())
            tail = b""
            if size > self.budget and url.lower().endswith((".parquet", ".pq")):
                tail = self._footer(f, size)
            head = f.read_at(min(size, self.budget - len(tail)), 0)
            if not tail and size > len(head) and head.startswith(_PARQUET_MAGIC):
                tail = self._footer(f, size)
                head = head[: max(0, self.budget - len(tail))]
        return _Prefetched(size, head, tail)

    def _footer(self, f: pa.NativeFile, size: int) -> bytes:
        """The Parquet footer (metadata + length + magic) if it fits in half the budget."""
        if size < 12:
            return b""
        trailer = f.read_at(8, size - 8)
        length = int.from_bytes(trailer[:4], "little")
        if trailer[4:] != _PARQUET_MAGIC or length + 8 > self.budget // 2 or length + 8 > size:
            return b""
        data: bytes = f.read_at(length + 8, size - length - 8)
        return data


class _Superseded(Exception):
    """A queued prefetch whose object is no longer the next one."""


_PREFETCHER = Prefetcher()


def prefetch_hint(paths: Sequence[str], index: int) -> None:
    """File `index` of `paths` is being processed now: start reading `paths[index + 1]` (S3
    only) so that its first bytes are in memory when the reader gets to it."""
    _PREFETCHER.hint(paths, index)
