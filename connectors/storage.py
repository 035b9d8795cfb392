"""One small interface over local files and S3 objects (``s3://bucket/key``).

    is_s3(path) -> bool
    configure_s3(*, endpoint_url=None, region=None, session=None)    process-wide settings
    list_s3(spec) -> list[ObjectInfo]          s3://b/prefix/, s3://b/prefix/*.parquet, s3://b/key
    discover_s3(spec) -> list[SourceFile]      list_s3 + format detection (a few in parallel)
    open_random_access(path, *, etag, size) -> pa.NativeFile  seekable (Parquet footer, chunks)
    open_stream(path, *, compression, buffer_size, etag, size) -> pa.NativeFile   sequential
    open_parquet(path, *, etag, size, **kwargs) -> pq.ParquetFile      closes its file on close()
    read_head(path, n) -> bytes                first bytes, for content sniffing
    prefetch_hint(files, index)                start reading files[index + 1] in the background

Everything goes through one boto3 S3 client, built from boto3's standard credential chain
(environment, profile, SSO, instance/task role) or from the boto3 session given to
`configure_s3` (e.g. ``AwsCredentials.get_boto3_session()`` from a prefect-aws block). Listing
uses the ``list_objects_v2`` paginator (any number of objects, sorted by key). Objects are read
with ranged GETs (``get_object(Range=...)``) of at most ``S3_STREAM_BUFFER_BYTES`` (sequential)
or the reader's buffer size (Parquet): memory stays bounded whatever the object's size; nothing
is downloaded whole.

Reads are pinned to the object as it was listed when the run was planned: every GET carries
``If-Match: <the listed ETag>`` (the `etag` the readers pass from `SourceFile.etag`; without one,
the ETag of the first answer). An object overwritten or replaced during the run answers 412 and
the read raises `SourceChangedError` naming the URL, so bytes of a new version are never read
under the identity (ETag + size) the checkpoint records. The answer's ETag is compared too, for
S3-compatible stores that ignore If-Match. With the size known from the listing no HeadObject is
needed; a Parquet footer comes with one ranged GET of the object's last ``PARQUET_TAIL_BYTES``,
and footers already read (per URL and ETag) are reused, so planning and reading an object read
its footer once.

Endpoint: ``configure_s3(endpoint_url=...)`` (the CLI's ``--s3-endpoint-url``), else the
environment variable ``MOESIF_BACKFILL_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (boto3's own variables), else AWS. Region: with a custom endpoint the
configured region, boto3's, or us-east-1; on AWS boto3 follows S3's redirect to the bucket's own
region, so a bucket in another region than the Firehose stream works.

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
import pyarrow.parquet as pq
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from connectors import sources
from moesif_backfill.errors import SourceChangedError, SourceError

__all__ = [
    "ENDPOINT_ENV",
    "PARQUET_TAIL_BYTES",
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
#: One ranged GET of an object's end brings its size, its ETag and (Parquet) its footer: 64 KiB
#: is what pyarrow's Parquet reader asks for first, so the footer read is served from it.
PARQUET_TAIL_BYTES = 64 << 10
LOCAL_BUFFER_BYTES = 1 << 20
_DETECT_WORKERS = 16
_HEAD_CACHE_ENTRIES = 64
_HEAD_CACHE_MAX_BYTES = 128 << 10  # format detection reads up to 64 KiB
_FOOTER_CACHE_ENTRIES = 256
_FOOTER_CACHE_MAX_BYTES = 16 << 20  # all cached footers together (serialized size)
_FOOTER_MAX_BYTES = 1 << 20  # a bigger footer is not kept
_READ_ATTEMPTS = 3  # a GET whose body broke off is made again (botocore retries the request)
_PARQUET_MAGIC = b"PAR1"
_PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})


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
_heads: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()  # url -> (first bytes, whole obj)
# (url, etag) -> the Parquet footer read for that version of the object
_footers: OrderedDict[tuple[str, str], pq.FileMetaData] = OrderedDict()


def configure_s3(
    *, endpoint_url: str | None = None, region: str | None = None, session: Any = None
) -> None:
    """Set the S3 endpoint and region for this process (None: from the environment/boto3).

    `session`: a boto3 Session whose credentials to use instead of boto3's standard chain (for
    a prefect-aws ``AwsCredentials`` block: ``block.get_boto3_session()``). Clears every cache
    (client, prefetched data, footers).
    """
    global _settings  # noqa: PLW0603 - process-wide settings are the point of this function
    with _lock:
        _settings = _Settings(endpoint_url or None, region or None, session)
        _state.clear()
        _heads.clear()
        _footers.clear()
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


def _no_credentials_message(url: str) -> str:
    return (
        f"{url}: no AWS credentials found to read it; configure boto3's standard chain "
        "(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, SSO, or an instance/task "
        "role)."
    )


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
    if code == "NoSuchBucket":
        return f"{url}: the bucket {bucket!r} does not exist{at} (NoSuchBucket); check the URL."
    if code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}:
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
    if code in {"NoSuchKey", "404", "NotFound"}:
        return (
            f"{url}: the object does not exist{at} (deleted or renamed since it was listed?); "
            "check the URL or list the inputs again."
        )
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}:
        return (
            f"{url}: the AWS credentials were rejected ({code}); check the profile, environment "
            "variables or role in use, or refresh an expired session."
        )
    if code in {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"}:
        return f"{url}: S3{at} is throttling or unavailable ({code}); rerun later."
    action = "list objects under it" if listing else "read it"
    return f"{url}: cannot {action} ({code or 'unknown S3 error'})."


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


def open_random_access(
    path: str, *, etag: str | None = None, size: int | None = None
) -> pa.NativeFile:
    """A seekable file (caller closes it). Local: an OS file. S3: ranged GETs on demand, each
    pinned to `etag` (the ETag listed at planning; None: the ETag of the first answer), served
    from the prefetched beginning/footer when `prefetch_hint` read them already. `size` (from
    the listing) saves a request; without it the object's size, ETag and last
    ``PARQUET_TAIL_BYTES`` are read now, in one GET."""
    if not is_s3(path):
        return pa.OSFile(path, "r")
    obj = _S3Object(path, etag=etag, size=size, prefetched=_PREFETCHER.take(path, etag))
    obj.size()
    return pa.PythonFile(obj, mode="r")


def open_stream(
    path: str,
    *,
    compression: str | None = None,
    buffer_size: int = LOCAL_BUFFER_BYTES,
    etag: str | None = None,
    size: int | None = None,
) -> pa.NativeFile:
    """A sequential, decompressed byte stream (caller closes it). S3 objects are read in
    ranged GETs of max(buffer_size, S3_STREAM_BUFFER_BYTES), each pinned to `etag` as in
    `open_random_access`; local files as before (OSError for the caller to explain)."""
    if not is_s3(path):
        return pa.input_stream(path, compression=compression, buffer_size=buffer_size)
    obj = _S3Object(
        path, etag=etag, size=size, prefetched=_PREFETCHER.take(path, etag), stream=True
    )
    return pa.input_stream(
        pa.PythonFile(obj, mode="r"),
        compression=compression,
        buffer_size=max(buffer_size, S3_STREAM_BUFFER_BYTES),
    )


def open_parquet(
    path: str, *, etag: str | None = None, size: int | None = None, **kwargs: Any
) -> pq.ParquetFile:
    """``pq.ParquetFile`` over `open_random_access(path, etag=..., size=...)` that closes the
    file when it is closed (ParquetFile leaves a file it was given open otherwise). The footer
    of an S3 object is read once per ETag: later opens reuse it."""
    key = (path, etag) if is_s3(path) and etag else None
    with _lock:
        metadata = _footers.get(key) if key is not None else None
    source = open_random_access(path, etag=etag, size=size)
    try:
        pf = pq.ParquetFile(source, metadata=metadata, **kwargs)
    except BaseException:
        source.close()
        raise
    pf._close_source = True  # ParquetFile.close() then closes `source` too
    if key is not None and metadata is None:
        _keep_footer(key, pf.metadata)
    return pf


def _keep_footer(key: tuple[str, str], metadata: pq.FileMetaData) -> None:
    if metadata.serialized_size > _FOOTER_MAX_BYTES:
        return
    with _lock:
        _footers[key] = metadata
        total = sum(m.serialized_size for m in _footers.values())
        while len(_footers) > _FOOTER_CACHE_ENTRIES or total > _FOOTER_CACHE_MAX_BYTES:
            total -= _footers.popitem(last=False)[1].serialized_size


def _changed_message(url: str, etag: str | None) -> str:
    listed = f" (ETag {etag})" if etag else ""
    return (
        f"{url}: the object changed during the run: S3 no longer has the version{listed} that "
        "was listed when the run was planned; it was overwritten or replaced while the run "
        "read it. Nothing of the new version was sent under the old version's identity, and "
        "the checkpoint holds what was delivered. Rerun to read the new version; if part of "
        "the old one was delivered already, the rerun stops saying the file changed since it "
        f"was (partly) delivered: then rerun with --reprocess {url}."
    )


# --------------------------------------------------------------------------------------------
# one S3 object, pinned to one version


@dataclass(frozen=True)
class _Prefetched:
    size: int
    etag: str | None
    head: bytes  # bytes [0, len(head))
    tail: bytes  # bytes [size - len(tail), size): a Parquet footer, or b""

    @property
    def whole(self) -> bool:
        return len(self.head) >= self.size


class _S3Object(io.RawIOBase):
    """An S3 object read with ranged GETs, every one pinned to the same version: it sends
    ``If-Match: <etag>`` (`etag` None: the ETag of the first answer) and checks the answer's
    ETag, so a replaced object raises SourceChangedError instead of giving the new bytes.

    Bytes already in memory (the prefetched beginning and Parquet footer, or the end read to
    learn an unknown size) are served from there; as a stream, the beginning is let go once
    read past. Thread-safety: pyarrow's PythonFile serialises the calls.
    """

    def __init__(
        self,
        url: str,
        *,
        etag: str | None,
        size: int | None,
        prefetched: _Prefetched | None = None,
        stream: bool = False,
    ) -> None:
        super().__init__()
        self._url = url
        self._bucket, self._key = _split(url)
        self._etag = etag
        self._size = size
        self._head = self._tail = b""
        if prefetched is not None:
            self._size = prefetched.size
            self._etag = self._etag or prefetched.etag
            self._head, self._tail = prefetched.head, prefetched.tail
        self._stream = stream
        self._pos = 0

    @property
    def etag(self) -> str | None:
        return self._etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        """The object's size; when unknown, one GET of its last PARQUET_TAIL_BYTES (kept)."""
        if self._size is None:
            got = self._get(f"bytes=-{PARQUET_TAIL_BYTES}")
            if self._size is None:  # an empty object answers 416 (or 200 without a range)
                self._size = 0 if got is None else len(got)
            if got is not None and len(got) <= self._size:
                self._tail = got
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._pos
        else:
            base = self.size()
        if base + offset < 0:
            raise OSError(f"{self._url}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self._size is None and size is not None and size >= 0:
            # a stream of unknown size: the first GET's Content-Range tells it, no extra request
            data = self.read_range(self._pos, self._pos + size)
            if self._size is None:  # past the end (416), or an answer without Content-Range
                self._size = self._pos + len(data)
            self._pos += len(data)
            return data
        total = self.size()
        start = self._pos
        end = total if size is None or size < 0 else min(total, start + size)
        tail_start = total - len(self._tail)
        pieces: list[bytes] = []
        pos = start
        while pos < end:
            if pos < len(self._head):
                piece = self._head[pos : min(end, len(self._head))]
            elif self._tail and pos >= tail_start:
                piece = self._tail[pos - tail_start : end - tail_start]
            else:
                piece = self.read_range(pos, min(end, tail_start) if self._tail else end)
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

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) in one ranged GET (fewer at the object's end)."""
        if stop <= start:
            return b""
        return self._get(f"bytes={start}-{stop - 1}") or b""

    def _get(self, byte_range: str) -> bytes | None:
        """One pinned ranged GET; None when the range is past the end (416)."""
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": byte_range}
        if self._etag:
            kwargs["IfMatch"] = f'"{self._etag}"'
        for attempt in range(1, _READ_ATTEMPTS + 1):
            try:
                response = _client().get_object(**kwargs)
            except ClientError as exc:
                code = _code(exc)
                if code in _PRECONDITION_FAILED:
                    raise SourceChangedError(_changed_message(self._url, self._etag)) from None
                if code in {"InvalidRange", "416"}:
                    return None
                raise SourceError(_client_error_message(self._url, exc, listing=False)) from exc
            except BotoCoreError as exc:
                raise SourceError(_client_error_message(self._url, exc, listing=False)) from exc
            self._check_version(response)
            try:
                data: bytes = response["Body"].read()
            except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError) as exc:
                response["Body"].close()
                if attempt == _READ_ATTEMPTS:
                    raise SourceError(
                        f"{self._url}: the connection broke off while reading it "
                        f"({type(exc).__name__}, {_READ_ATTEMPTS} attempts); rerun later."
                    ) from exc
                continue
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_version(self, response: dict[str, Any]) -> None:
        """Pin to the answer's ETag (or check it: a store may ignore If-Match) and learn the
        size from Content-Range."""
        etag = str(response.get("ETag") or "").strip('"') or None
        if self._etag is None:
            self._etag = etag
        elif etag is not None and etag != self._etag:
            response["Body"].close()
            raise SourceChangedError(_changed_message(self._url, self._etag))
        total = str(response.get("ContentRange") or "").rpartition("/")[2]
        if total.isdigit():
            if self._size is not None and int(total) != self._size:
                response["Body"].close()
                raise SourceChangedError(_changed_message(self._url, self._etag))
            self._size = int(total)

    def close(self) -> None:
        self._head = self._tail = b""
        super().close()


# --------------------------------------------------------------------------------------------
# prefetching the next object

_Key = tuple[str, str | None, int]  # (url, etag, size) of a planned SourceFile


def _key_of(src: sources.SourceFile) -> _Key:
    return (src.path, src.etag, src.size)


class Prefetcher:
    """Reads the beginning of the next S3 object in a background thread, pinned to the ETag
    it was planned with (a replaced object is not prefetched: the reader's own read then
    reports it).

    `hint(files, index)` says file `index` is being processed now: the next file is fetched,
    and what was fetched for file `index` stays for its readers (a CSV or NDJSON file is opened
    twice: types, then rows) until the next hint. So at most one object ahead, and at most
    `budget` bytes per object held (two objects: the current one and the next). `take(url,
    etag)` gives the prefetched bytes to a reader (waiting for a read in flight, which does the
    requests the reader would), or None.
    """

    def __init__(self, budget: int = PREFETCH_BYTES) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, Future[_Prefetched]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None

    def hint(self, files: Sequence[sources.SourceFile], index: int) -> None:
        current = _key_of(files[index]) if 0 <= index < len(files) else None
        following = None
        if 0 <= index + 1 < len(files) and is_s3(files[index + 1].path):
            following = _key_of(files[index + 1])
        with self._lock:
            for key in [k for k in self._entries if k not in (current, following)]:
                self._entries.pop(key).cancel()  # still queued: never started
            if following is None or following in self._entries:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, "s3-prefetch")
            self._entries[following] = self._pool.submit(self._fetch, following)

    def clear(self) -> None:
        with self._lock:
            for future in self._entries.values():
                future.cancel()
            self._entries.clear()

    def peek(self, url: str) -> _Prefetched | None:
        """The prefetched data for `url` if it is already there (never waits)."""
        with self._lock:
            futures = [f for k, f in self._entries.items() if k[0] == url]
        for future in futures:
            if future.done() and future.exception() is None:
                return future.result()
        return None

    def take(self, url: str, etag: str | None) -> _Prefetched | None:
        with self._lock:
            key = next((k for k in self._entries if k[0] == url and k[1] == etag), None)
            future = self._entries.get(key) if key is not None else None
        if future is None:
            return None
        try:
            return future.result()
        except Exception:
            return None  # the reader's own read reports the problem

    def _fetch(self, key: _Key) -> _Prefetched:
        url, etag, size = key
        obj = _S3Object(url, etag=etag, size=size)
        size = obj.size()
        tail = b""
        if size > self.budget and url.lower().endswith((".parquet", ".pq")):
            tail = self._footer(obj, size)
        head = obj.read_range(0, min(size, self.budget - len(tail)))
        if not tail and size > len(head) and head.startswith(_PARQUET_MAGIC):
            tail = self._footer(obj, size)
            head = head[: max(0, self.budget - len(tail))]
        return _Prefetched(size, obj.etag, head, tail)

    def _footer(self, obj: _S3Object, size: int) -> bytes:
        """The object's end, holding the whole Parquet footer (metadata + length + magic), in
        one GET (two for a footer over PARQUET_TAIL_BYTES), if it fits in half the budget."""
        end = obj.read_range(max(0, size - PARQUET_TAIL_BYTES), size)
        if len(end) < 12 or end[-4:] != _PARQUET_MAGIC:
            return b""
        need = int.from_bytes(end[-8:-4], "little") + 8
        if need > self.budget // 2 or need > size:
            return b""
        if need > len(end):
            end = obj.read_range(size - need, size - len(end)) + end
        return end


_PREFETCHER = Prefetcher()


def prefetch_hint(files: Sequence[sources.SourceFile], index: int) -> None:
    """File `index` of `files` is being processed now: start reading `files[index + 1]` (S3
    only, pinned to its planned ETag) so that its first bytes are in memory when the reader
    gets to it."""
    _PREFETCHER.hint(files, index)
