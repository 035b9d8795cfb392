"""`S3Store`: S3 access for one run: one boto3 client, its caches and its prefetcher.

    store = S3Store(endpoint_url=None, region=None, session=None)   built once per run
    store.list(spec) -> list[ObjectInfo]          s3://b/prefix/, s3://b/prefix/*.parquet, s3://b/key
    store.read_head(url, n) -> bytes              first bytes, for content sniffing
    store.open_random_access(url, *, etag, size) -> pa.NativeFile   seekable
    store.open_stream(url, *, compression, buffer_size, etag, size) -> pa.NativeFile
    store.open_parquet(url, *, etag, size, **kwargs) -> pq.ParquetFile   closes its file
    store.prefetch(files, index)                  fetch the next objects in the background
    store.close()

No process-wide state: one store per run (pipeline.run), passed to discovery, planning and
the readers; a Dask worker builds its own. The client comes from the boto3 session given
(a prefect-aws block's ``get_boto3_session()``) or boto3's standard credential chain.
Endpoint: `endpoint_url`, else ``MOESIF_BACKFILL_S3_ENDPOINT_URL``, else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS; region: with a custom endpoint the
one given, boto3's, or us-east-1; on AWS boto3 follows S3's redirect to the bucket's region.

Requests: the listing gives every object's size and ETag, so no HeadObject is needed. A small
object (at most ``small_object_bytes``) is fetched whole with ONE GET the first time anything
reads it (format detection at planning, usually); its content sniffing, Parquet footer and
data are then served from those bytes, kept in a cache of at most ``cache_bytes`` (least
recently used first out). A bigger object is read with ranged GETs of at most
``S3_STREAM_BUFFER_BYTES`` (streams) or the reader's buffer (Parquet), its footer with one GET
of its last ``PARQUET_TAIL_BYTES``; footers already read (per URL and ETag) are reused. Every
GET is pinned to the listed ETag (``If-Match``): a replaced object raises SourceChangedError
(`connectors.s3_object`).

Prefetch: `prefetch(files, index)` (file `index` is being processed) fetches the next S3 files
on ``prefetch_workers`` threads, at most ``prefetch_objects`` files and ``prefetch_bytes`` ahead
(whichever comes first; at least one file): small objects whole, of bigger ones the beginning
and the Parquet footer (at most ``object_budget_bytes`` each). Memory held: the cache plus
what is in flight, both bounded whatever the number or size of objects.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config

from connectors.s3_errors import is_s3, shown_endpoint
from connectors.s3_listing import ObjectInfo, list_objects
from connectors.s3_object import PARQUET_MAGIC, PARQUET_TAIL_BYTES, Fetched, S3Object
from connectors.source_file import SourceFile

ENDPOINT_ENV = "MOESIF_BACKFILL_S3_ENDPOINT_URL"
#: Ranged GET size (and buffer) for sequential reads of S3 objects.
S3_STREAM_BUFFER_BYTES = 8 << 20
#: Detection reads this much of an object that is not small (one GET).
HEAD_BYTES = 64 << 10
_FOOTER_CACHE_ENTRIES = 256
_FOOTER_CACHE_MAX_BYTES = 16 << 20  # all cached footers together (serialized size)
_FOOTER_MAX_BYTES = 1 << 20  # a bigger footer is not kept

_Key = tuple[str, str | None]  # (url, etag)


class OwnedParquetFile(pq.ParquetFile):  # type: ignore[misc]  # pyarrow: no type stubs
    """A ParquetFile that closes the file it reads when it is closed."""

    def __init__(self, source: pa.NativeFile, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._owned_source = source

    def close(self, force: bool = False) -> None:
        try:
            super().close(force=force)
        finally:
            self._owned_source.close()


class S3Store:
    """S3 access for one run (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: Any = None,
        client: Any = None,
        small_object_bytes: int = 1 << 20,
        cache_bytes: int = 64 << 20,
        prefetch_objects: int = 16,
        prefetch_bytes: int = 32 << 20,
        prefetch_workers: int = 8,
        object_budget_bytes: int = 8 << 20,
    ) -> None:
        self.endpoint_url = _resolve_endpoint(endpoint_url)
        self.region = region or None
        self.session = session
        self.small_object_bytes = small_object_bytes
        self.cache_bytes = cache_bytes
        self.prefetch_objects = prefetch_objects
        self.prefetch_bytes = prefetch_bytes
        self.prefetch_workers = prefetch_workers
        self.object_budget_bytes = object_budget_bytes
        self.shown_endpoint = shown_endpoint(self.endpoint_url)
        self._lock = threading.RLock()
        self._client: Any = client  # None: built from the session on first use
        self._listed: dict[str, tuple[str | None, int]] = {}  # url -> (etag, size) as listed
        self._cache: OrderedDict[_Key, Fetched] = OrderedDict()
        self._cached_bytes = 0
        self._inflight: dict[_Key, Future[Fetched]] = {}
        self._footers: OrderedDict[_Key, pq.FileMetaData] = OrderedDict()
        self._footer_bytes = 0
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.shown_endpoint or 'AWS'!r}, region={self.region!r})"

    # ---------------------------------------------------------------------------- client
    @property
    def client(self) -> Any:
        """The run's boto3 S3 client (built on first use)."""
        with self._lock:
            if self._client is None:
                config = Config(
                    retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=32,
                )
                session = self.session or boto3.session.Session()
                self._client = session.client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
            return self._client

    def close(self) -> None:
        """Stop prefetching and let go of every cached byte (the store can still be used)."""
        with self._lock:
            pool, self._pool = self._pool, None
            for future in self._inflight.values():
                future.cancel()
            self._inflight.clear()
            self._cache.clear()
            self._cached_bytes = 0
            self._footers.clear()
            self._footer_bytes = 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------------------- listing
    def list(self, spec: str) -> list[ObjectInfo]:
        """Objects `spec` names, sorted by key (connectors.s3_listing); their ETags and sizes
        are remembered, so that reads need not ask for them."""
        objects = list_objects(self.client, spec, endpoint=self.shown_endpoint)
        with self._lock:
            for info in objects:
                self._listed[info.url] = (info.etag or None, info.size)
        return objects

    # ---------------------------------------------------------------------------- reading
    def read_head(self, url: str, n: int) -> bytes:
        """The first `n` bytes (fewer for a shorter object), pinned to the listed ETag. A small
        object is fetched whole (and kept for its readers), else its first max(n, HEAD_BYTES)."""
        etag, size = self._listed.get(url, (None, None))
        entry = self._entry(url, etag, size)
        if entry is not None and (len(entry.head) >= n or entry.whole):
            return entry.head[:n]
        obj = self._object(url, etag, size)
        head = obj.read_range(0, max(n, HEAD_BYTES)) if size is None or size > 0 else b""
        if size is None:
            size = obj.size()
        if obj.etag is not None and len(head) <= max(HEAD_BYTES, self.small_object_bytes):
            self._keep((url, obj.etag), Fetched(size, obj.etag, head, b""))
        return head[:n]

    def open_random_access(
        self, url: str, *, etag: str | None = None, size: int | None = None
    ) -> pa.NativeFile:
        """A seekable file (caller closes it): the object's bytes from memory when it was
        fetched whole, else ranged GETs on demand, each pinned to `etag`."""
        entry = self._entry(url, etag, size)
        if entry is not None and entry.whole:
            return pa.BufferReader(entry.head)
        obj = self._object(url, etag, size, entry)
        obj.size()
        return pa.PythonFile(obj, mode="r")

    def open_stream(
        self,
        url: str,
        *,
        compression: str | None = None,
        buffer_size: int = 1 << 20,
        etag: str | None = None,
        size: int | None = None,
    ) -> pa.NativeFile:
        """A sequential, decompressed byte stream (caller closes it), read in ranged GETs of
        max(buffer_size, S3_STREAM_BUFFER_BYTES) pinned to `etag`, or from memory."""
        entry = self._entry(url, etag, size)
        raw: pa.NativeFile
        if entry is not None and entry.whole:
            raw = pa.BufferReader(entry.head)
        else:
            raw = pa.PythonFile(self._object(url, etag, size, entry, stream=True), mode="r")
        return pa.input_stream(
            raw, compression=compression, buffer_size=max(buffer_size, S3_STREAM_BUFFER_BYTES)
        )

    def open_parquet(
        self, url: str, *, etag: str | None = None, size: int | None = None, **kwargs: Any
    ) -> pq.ParquetFile:
        """A ParquetFile over the object that closes it when closed; its footer is read once
        per ETag (later opens reuse it)."""
        key = (url, etag) if etag else None
        with self._lock:
            metadata = self._footers.get(key) if key is not None else None
        source = self.open_random_access(url, etag=etag, size=size)
        try:
            pf = OwnedParquetFile(source, metadata=metadata, **kwargs)
        except BaseException:
            source.close()
            raise
        if key is not None and metadata is None:
            self._keep_footer(key, pf.metadata)
        return pf

    # ---------------------------------------------------------------------------- prefetch
    def prefetch(self, files: Sequence[SourceFile], index: int) -> None:
        """File `index` of `files` is being processed: fetch the next S3 files in the
        background (bounded by prefetch_objects and prefetch_bytes; at least one)."""
        window = files[index + 1 : index + 1 + self.prefetch_objects]
        wanted: list[tuple[_Key, int]] = []
        ahead = 0
        for src in window:
            if not is_s3(src.path):
                continue
            cost = min(src.size, self._budget(src.size))
            if wanted and ahead + cost > self.prefetch_bytes:
                break
            ahead += cost
            wanted.append(((src.path, src.etag), src.size))
        keep = {key for key, _ in wanted}
        with self._lock:
            for key in [k for k in self._inflight if k not in keep]:
                if self._inflight[key].cancel():  # still queued: never started
                    del self._inflight[key]
            for key, size in wanted:
                if key in self._inflight or self._enough(self._cache.get(key), size):
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.prefetch_workers, "s3-prefetch")
                future = self._pool.submit(self._fetch, key[0], key[1], size)
                self._inflight[key] = future
                future.add_done_callback(functools.partial(self._landed, key))

    def _landed(self, key: _Key, future: Future[Fetched]) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if not future.cancelled() and future.exception() is None:
            self._keep(key, future.result())

    def fetched(self, url: str, etag: str | None, *, wait: bool = False) -> Fetched | None:
        """What is in memory of this version of the object (`wait`: also once a fetch in
        flight lands), or None; never reads anything itself."""
        key = (url, etag)
        with self._lock:
            entry = self._cache.get(key)
            future = self._inflight.get(key)
        if future is not None and wait:
            try:
                return future.result()
            except Exception:  # the reader's own read reports the problem
                return None
        return entry

    def _enough(self, entry: Fetched | None, size: int) -> bool:
        """Whether `entry` holds what a prefetch would (not just a detection head)."""
        if entry is None:
            return False
        return entry.whole or bool(entry.tail) or len(entry.head) >= min(size, self._budget(size))

    def _budget(self, size: int) -> int:
        return size if size <= self.small_object_bytes else self.object_budget_bytes

    def _fetch(self, url: str, etag: str | None, size: int | None) -> Fetched:
        """One object's bytes as far as the budget goes: a small object whole (one GET); of a
        bigger one its beginning and, for Parquet, its footer (unless planning read it)."""
        obj = self._object(url, etag, size)
        size = obj.size()
        budget = self._budget(size)
        tail = b""
        footer = (url, etag) not in self._footers  # a known footer is not read again
        if footer and size > budget and url.lower().endswith((".parquet", ".pq")):
            tail = _footer(obj, size, budget)
        head = obj.read_range(0, min(size, budget - len(tail)))
        if footer and not tail and size > len(head) and head.startswith(PARQUET_MAGIC):
            tail = _footer(obj, size, budget)
            head = head[: max(0, budget - len(tail))]
        return Fetched(size, obj.etag, head, tail)

    # ---------------------------------------------------------------------------- caches
    def _object(
        self,
        url: str,
        etag: str | None,
        size: int | None,
        entry: Fetched | None = None,
        *,
        stream: bool = False,
    ) -> S3Object:
        return S3Object(
            self.client,
            url,
            etag=etag,
            size=size,
            fetched=entry,
            stream=stream,
            endpoint=self.shown_endpoint,
        )

    def _entry(self, url: str, etag: str | None, size: int | None) -> Fetched | None:
        """What is in memory (or being fetched) of this version of the object; a small object
        not read yet is fetched whole now (one GET). None: read it with ranged GETs."""
        if etag is None:
            return None  # not pinned: nothing cached can be said to be this version
        key = (url, etag)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry
            future = self._inflight.get(key)
        if future is not None:
            try:
                return future.result()
            except Exception:  # the reader's own read reports the problem
                return None
        if size is None or size > self.small_object_bytes:
            return None
        entry = self._fetch(url, etag, size)
        self._keep(key, entry)
        return entry

    def _keep(self, key: _Key, entry: Fetched) -> None:
        if entry.nbytes > self.cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
            self._cache[key] = entry
            self._cached_bytes += entry.nbytes
            while self._cached_bytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes

    def _keep_footer(self, key: _Key, metadata: pq.FileMetaData) -> None:
        if metadata.serialized_size > _FOOTER_MAX_BYTES:
            return
        with self._lock:
            old = self._footers.pop(key, None)
            self._footer_bytes += metadata.serialized_size - (old.serialized_size if old else 0)
            self._footers[key] = metadata
            while (
                len(self._footers) > _FOOTER_CACHE_ENTRIES
                or self._footer_bytes > _FOOTER_CACHE_MAX_BYTES
            ):
                self._footer_bytes -= self._footers.popitem(last=False)[1].serialized_size


def _resolve_endpoint(given: str | None) -> str | None:
    for value in (
        given,
        os.environ.get(ENDPOINT_ENV),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return value.rstrip("/")
    return None


def _footer(obj: S3Object, size: int, budget: int) -> bytes:
    """The object's end, holding the whole Parquet footer (metadata + length + magic), in one
    GET (two for a footer over PARQUET_TAIL_BYTES), if it fits in half the budget."""
    end = obj.read_range(max(0, size - PARQUET_TAIL_BYTES), size)
    if len(end) < 12 or end[-4:] != PARQUET_MAGIC:
        return b""
    need = int.from_bytes(end[-8:-4], "little") + 8
    if need > budget // 2 or need > size:
        return b""
    if need > len(end):
        end = obj.read_range(size - need, size - len(end)) + end
    return end
