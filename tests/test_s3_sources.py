"""Sources on S3 (moto server): listing, globs, identity, reading, errors, memory, prefetch, and
objects replaced during the run (every read pinned to the ETag listed at planning)."""

from __future__ import annotations

import gzip
import io
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

import pipeline.run
from connectors import csv_dialect, file_access, ndjson_values, s3_store
from connectors.discovery import discover_sources
from connectors.readers import iter_batches, read_schema
from connectors.s3_object import PARQUET_TAIL_BYTES
from connectors.s3_store import S3_STREAM_BUFFER_BYTES, S3Store
from connectors.source_file import SourceFile
from moesif_backfill.errors import CheckpointMismatchError, SourceChangedError, SourceError
from pipeline.run import Run
from tests.datasets import expected_ids, write_payments
from tests.runner import file_progress, run_plain, settings_for
from tests.standins.moto_firehose import LocalFirehose, StreamHandle

pytestmark = pytest.mark.integration

CSV_TEXT = b'id,amount,note\n"000123",1.50,hello\n000124,2,"a, b"\n'
NDJSON_TEXT = b'{"id": "000123", "amount": 1.5, "note": "hello"}\n{"id": "000124", "amount": 2}\n'


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


class Bucket:
    """A fresh bucket on the moto server, and an S3Store for it (`store`, replaced by
    `new_store(**settings)`, closed at the end)."""

    def __init__(self, s3: Any, name: str, endpoint_url: str, region: str) -> None:
        self.s3, self.name = s3, name
        self.endpoint_url, self.region = endpoint_url, region
        self.stores: list[S3Store] = []
        self.store = self.new_store()

    def new_store(self, **settings: Any) -> S3Store:
        self.store = S3Store(endpoint_url=self.endpoint_url, region=self.region, **settings)
        self.stores.append(self.store)
        return self.store

    def discover(self, specs: list[str]) -> list[SourceFile]:
        return discover_sources(specs, s3=self.store)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.name, Key=key, Body=data)
        return self.url(key)

    def put_many(self, items: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: self.put(*kv), items.items()))


@pytest.fixture
def bucket(moto_firehose: LocalFirehose) -> Iterator[Bucket]:
    s3 = moto_firehose.s3_client()
    name = f"src-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    bucket = Bucket(s3, name, moto_firehose.endpoint_url, moto_firehose.region)
    try:
        yield bucket
    finally:
        for store in bucket.stores:
            store.close()
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=name)


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def keys(found: list[Any], bucket: Bucket) -> list[str]:
    prefix = bucket.url()
    return [(getattr(x, "url", None) or x.path).removeprefix(prefix) for x in found]


_POOLS: list[Any] = []


def _keep(pool: Any) -> Any:
    """Memory pools live as long as the process: a buffer allocated from a pool that is gone
    would be freed into freed memory."""
    _POOLS.append(pool)
    return pool


def read_all(src: SourceFile, s3: S3Store | None, **kwargs: Any) -> pa.Table:
    return pa.Table.from_batches(list(iter_batches(src, s3=s3, **kwargs)))


class Gets:
    """The GetObject calls an S3Store makes (seen through botocore's event hooks on its real
    client): the Range asked for and the bytes answered, in order."""

    def __init__(self, store: S3Store) -> None:
        self.ranges: list[str] = []
        self.sizes: list[int] = []
        events = store.client.meta.events
        events.register("before-call.s3.GetObject", self._asked)
        events.register("after-call.s3.GetObject", self._answered)

    def _asked(self, params: dict[str, Any], **_: Any) -> None:
        self.ranges.append(params["headers"].get("Range", ""))

    def _answered(self, parsed: dict[str, Any], **_: Any) -> None:
        self.sizes.append(int(parsed.get("ContentLength") or 0))

    def clear(self) -> None:
        self.ranges.clear()
        self.sizes.clear()


# ---------------------------------------------------------------------------------------------
# listing


def test_prefix_listing_paginates_sorted_and_skips_markers(bucket: Bucket) -> None:
    names = [f"unload/part-{i:05d}.csv" for i in range(1_105)]
    markers = [
        "unload/_SUCCESS",
        "unload/_committed_123",
        "unload/_started_123",
        "unload/part-00000.csv.crc",
        "unload/.part-00001.csv.crc",
        "unload/.hidden.csv",
        "unload/_temporary/0/part-9.csv",
        "unload/sub/",  # a console "folder" marker
    ]
    items = dict.fromkeys([*names, *markers, "unloaded.csv", "other/x.csv"], CSV_TEXT)
    shuffled = dict(random.Random(7).sample(sorted(items.items()), len(items)))
    bucket.put_many(shuffled)

    for spec in [bucket.url("unload/"), bucket.url("unload")]:
        found = bucket.store.list(spec)
        assert keys(found, bucket) == names  # > 1,000: several pages, in key order
        assert all(info.size == len(CSV_TEXT) and info.etag for info in found)
        assert '"' not in found[0].etag and found[0].last_modified is not None
    # the whole bucket
    assert len(bucket.store.list(bucket.url())) == len(names) + 2


def test_globs_single_objects_and_no_match(bucket: Bucket) -> None:
    bucket.put_many(
        {
            "2024/01/a.csv": CSV_TEXT,
            "2024/02/b.csv": CSV_TEXT,
            "2024/02/_tmp/c.csv": CSV_TEXT,
            "2024/02/notes.jsonl": NDJSON_TEXT,
            "2024/02/deep/er/d.csv": CSV_TEXT,
            "2025/01/e.csv": CSV_TEXT,
            "data": CSV_TEXT,  # an object and a "directory" with the same name
            "data/f.csv": CSV_TEXT,
            "data.csv": CSV_TEXT,
        }
    )

    def glob_keys(pattern: str) -> list[str]:
        return keys(bucket.store.list(bucket.url(pattern)), bucket)

    assert glob_keys("2024/*/*.csv") == ["2024/01/a.csv", "2024/02/b.csv"]
    assert glob_keys("2024/**/*.csv") == ["2024/01/a.csv", "2024/02/b.csv", "2024/02/deep/er/d.csv"]
    assert glob_keys("**/a.csv") == ["2024/01/a.csv"]
    assert glob_keys("202[4]/0?/b*") == ["2024/02/b.csv"]
    # a glob matching "directories" takes everything under them (like a local glob)
    assert glob_keys("20*") == [
        "2024/01/a.csv",
        "2024/02/b.csv",
        "2024/02/deep/er/d.csv",
        "2024/02/notes.jsonl",
        "2025/01/e.csv",
    ]
    # an exact key is that object; a prefix without a slash is a directory
    assert glob_keys("data") == ["data"]
    assert glob_keys("data/") == ["data/f.csv"]
    assert glob_keys("2025") == ["2025/01/e.csv"]
    assert glob_keys("2024/02/_tmp/c.csv") == ["2024/02/_tmp/c.csv"]  # named exactly: taken

    # discovery: de-duplicated across specs, formats detected, sorted
    found = bucket.discover([bucket.url("2024/**/*.csv"), bucket.url("2024/01/a.csv")])
    assert keys(found, bucket) == ["2024/01/a.csv", "2024/02/b.csv", "2024/02/deep/er/d.csv"]
    assert {(s.format, s.compression) for s in found} == {("csv", None)}

    for spec in [bucket.url("missing.csv"), bucket.url("nothing/"), bucket.url("*.parquet")]:
        with pytest.raises(SourceError, match="matched no data objects") as info:
            bucket.discover([spec])
        assert repr(spec) in str(info.value)


def test_identity_is_size_and_etag_and_changes_on_overwrite(bucket: Bucket) -> None:
    url = bucket.put("in/usage.csv", CSV_TEXT)
    [src] = bucket.discover([url])
    assert src.path == url and src.key == url and src.mtime_ns == 0
    assert src.size == len(CSV_TEXT) and src.etag
    assert src.identity() == {"size": len(CSV_TEXT), "etag": src.etag}

    bucket.put("in/usage.csv", CSV_TEXT.replace(b"hello", b"HELLO"))  # same size, new content
    [again] = bucket.discover([url])
    assert again.size == src.size and again.identity() != src.identity()

    # content detection looks at the object as it is now, not at bytes read before
    url = bucket.put("in/export", NDJSON_TEXT)
    assert [s.format for s in bucket.discover([url])] == ["ndjson"]
    bucket.put("in/export", parquet_bytes(pa.table({"a": [1]})))
    assert [s.format for s in bucket.discover([url])] == ["parquet"]
    # local files keep their identity (size + mtime)
    assert SourceFile("/x.csv", "csv", None, 3, 5).identity() == {"size": 3, "mtime_ns": 5}


# ---------------------------------------------------------------------------------------------
# reading


def test_parquet_csv_gz_and_ndjson_read_as_locally(bucket: Bucket, tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": [f"{i:06d}" for i in range(5_000)],
            "amount": pa.array(range(5_000), pa.int64()),
            "ts": pa.array(range(5_000), pa.timestamp("ms")),
        }
    )
    csv_gz = gzip.compress(CSV_TEXT * 1 + b"".join(b"%d,%d.5,n\n" % (i, i) for i in range(3_000)))
    files = {
        "x/a.snappy.parquet": parquet_bytes(table, row_group_size=1_000),
        "x/b.csv.gz": csv_gz,
        "x/c.jsonl": NDJSON_TEXT * 100,
        "x/d": parquet_bytes(table.slice(0, 10)),  # no extension: Parquet magic
        "x/e": gzip.compress(NDJSON_TEXT),  # no extension: gzip magic, then NDJSON content
        "x/0000_part_00.gz": gzip.compress(NDJSON_TEXT),
    }
    bucket.put_many(files)
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)

    remote = bucket.discover([bucket.url("x/")])
    local = bucket.discover([str(tmp_path / "x")])
    assert len(remote) == len(local) == len(files)
    for r, loc in zip(remote, local, strict=True):
        assert r.path.rsplit("/", 1)[1] == Path(loc.path).name
        assert (r.format, r.compression, r.size) == (loc.format, loc.compression, loc.size)
        for kwargs in [{}, {"text_columns": ["id"]}]:
            assert read_schema(r, s3=bucket.store, **kwargs) == read_schema(loc, **kwargs)
            assert read_all(r, bucket.store, **kwargs).equals(read_all(loc, bucket.store, **kwargs))
    assert [(s.path.rsplit("/", 1)[1], s.format, s.compression) for s in remote] == [
        ("0000_part_00.gz", "ndjson", "gzip"),
        ("a.snappy.parquet", "parquet", None),
        ("b.csv.gz", "csv", "gzip"),
        ("c.jsonl", "ndjson", None),
        ("d", "parquet", None),
        ("e", "ndjson", "gzip"),
    ]
    parquet = remote[1]
    got = read_all(parquet, bucket.store, columns=["amount", "id"], batch_rows=700)
    assert got.column_names == ["amount", "id"] and got.num_rows == 5_000


def test_open_parquet_closes_its_file(bucket: Bucket) -> None:
    url = bucket.put("p.parquet", parquet_bytes(pa.table({"a": [1, 2]})))
    opened: list[pa.NativeFile] = []
    for store in [bucket.store, bucket.new_store(small_object_bytes=0)]:  # memory, ranged GETs
        real = store.open_random_access
        opened.clear()

        def spy(path: str, real: Any = real, **kwargs: Any) -> pa.NativeFile:
            opened.append(real(path, **kwargs))
            return opened[-1]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store, "open_random_access", spy)
            with store.open_parquet(url) as pf:
                assert pf.metadata.num_rows == 2
        assert opened and opened[0].closed


def test_large_csv_streams_with_bounded_memory(bucket: Bucket) -> None:
    row = b"%08d,2024-03-01T04:45:42.914Z,%d.25,some text to make rows longer than short\n"
    data = b"id,ts,amount,note\n" + b"".join(row % (i, i) for i in range(700_000))
    size = len(data)
    assert size > 50_000_000
    url = bucket.put("big/usage.csv", data)
    del data
    [src] = bucket.discover([url])

    gets = Gets(bucket.store)  # every read from S3 is one ranged GET
    reads = gets.sizes

    # the storage layer: the first bytes come after one ranged GET, and it holds about one
    # GET's worth of memory whatever the object's size
    previous = pa.default_memory_pool()
    pool = _keep(pa.proxy_memory_pool(previous))
    pa.set_memory_pool(pool)
    try:
        total = 0
        with bucket.store.open_stream(url) as stream:
            while chunk := stream.read(1 << 20):
                if total == 0:
                    assert reads == [S3_STREAM_BUFFER_BYTES]
                total += len(chunk)
                del chunk
    finally:
        pa.set_memory_pool(previous)
    assert total == size
    assert pool.max_memory() <= 3 * S3_STREAM_BUFFER_BYTES, pool.max_memory()
    assert all(r.startswith("bytes=") for r in gets.ranges)

    # the readers stream it in batches over ranged GETs of bounded size. (pyarrow's CSV
    # reader reads up to 32 blocks ahead in the background: its own memory bound, on top.)
    gets.clear()
    rows = 0
    for batch in iter_batches(src, s3=bucket.store, text_columns=["id"], batch_rows=50_000):
        assert batch.num_rows <= 50_000
        rows += batch.num_rows
    assert rows == 700_000
    assert max(reads) <= S3_STREAM_BUFFER_BYTES and len(reads) > size // max(reads)


# ---------------------------------------------------------------------------------------------
# prefetch


def _settle(store: S3Store, *files: SourceFile) -> None:
    """Wait until the prefetches of `files` landed."""
    deadline = time.monotonic() + 30
    for src in files:
        while store.fetched(src.path, src.etag, wait=True) is None:
            assert time.monotonic() < deadline, "prefetch did not finish"
            time.sleep(0.01)


def test_prefetch_serves_the_next_objects(bucket: Bucket) -> None:
    big_csv = b"id,n\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(400_000))  # ~5 MB
    table = pa.table({"id": [str(i) for i in range(200_000)], "n": range(200_000)})
    big_parquet = parquet_bytes(table, row_group_size=20_000)
    urls = [
        bucket.put("p/0.csv", CSV_TEXT),
        bucket.put("p/1.csv", big_csv),
        bucket.put("p/2.parquet", big_parquet),
        bucket.put("p/3.jsonl", NDJSON_TEXT),
    ]
    # budget per object smaller than the big ones; two objects ahead at most
    store = bucket.new_store(object_budget_bytes=1 << 20, prefetch_objects=2)
    gets = Gets(store)
    files = bucket.discover([bucket.url("p/")])
    assert [f.path for f in files] == urls
    # planning: small objects fetched whole, of the big ones their first 64 KiB: one GET each
    planned = [f"bytes=0-{len(CSV_TEXT) - 1}", "bytes=0-65535", "bytes=0-65535"]
    assert sorted(gets.ranges) == sorted([*planned, f"bytes=0-{len(NDJSON_TEXT) - 1}"])
    whole = store.fetched(urls[3], files[3].etag)
    assert whole is not None and whole.whole and whole.head == NDJSON_TEXT

    gets.clear()
    store.prefetch(files, 0)  # file 0 is being read: 1 and 2 are fetched (3 is in memory)
    _settle(store, files[1], files[2])
    got = store.fetched(urls[1], files[1].etag)
    assert got is not None and got.size == len(big_csv) and len(got.head) == 1 << 20
    assert got.tail == b"" and got.etag == files[1].etag
    assert store.fetched(urls[1], "another-etag") is None  # pinned to the planned ETag
    got = store.fetched(urls[2], files[2].etag)
    assert got is not None and got.tail.endswith(b"PAR1") and 0 < len(got.head) < 1 << 20
    assert len(got.tail) == PARQUET_TAIL_BYTES  # the footer in one GET
    assert sorted(gets.ranges) == sorted(
        [
            f"bytes=0-{(1 << 20) - 1}",
            f"bytes={len(big_parquet) - PARQUET_TAIL_BYTES}-{len(big_parquet) - 1}",
            f"bytes=0-{(1 << 20) - PARQUET_TAIL_BYTES - 1}",
        ]
    )  # size known from the listing: no HeadObject
    store.prefetch(files, 0)  # already there: nothing asked again
    assert len(gets.ranges) == 3

    gets.clear()
    with store.open_stream(urls[1], etag=files[1].etag, size=files[1].size) as stream:
        assert stream.read() == big_csv
    assert gets.ranges == [f"bytes={1 << 20}-{len(big_csv) - 1}"]  # only the rest
    gets.clear()
    assert read_all(files[2], store).equals(pq.read_table(io.BytesIO(big_parquet)))
    tail_range = f"bytes={len(big_parquet) - PARQUET_TAIL_BYTES}-"
    assert gets.ranges and not any(r.startswith(("bytes=0-", tail_range)) for r in gets.ranges)
    gets.clear()
    assert read_all(files[3], store).num_rows == 2
    assert read_all(files[0], store, text_columns=["id"]).num_rows == 2
    assert gets.ranges == []  # whole objects: from memory

    local = [SourceFile(f"/local/{n}.csv", "csv", None, 10, 1) for n in "ab"]
    store.prefetch(local, 0)  # local files: nothing to do
    assert gets.ranges == []


def test_prefetch_window_is_bounded(bucket: Bucket) -> None:
    """At most prefetch_objects files and prefetch_bytes ahead (at least one file)."""
    bucket.put_many({f"b/{i}.csv": CSV_TEXT * 2000 for i in range(10)})  # > 64 KiB each
    size = len(CSV_TEXT) * 2000
    store = bucket.new_store(small_object_bytes=0, prefetch_objects=4, prefetch_bytes=size * 2)
    files = bucket.discover([bucket.url("b/")])
    gets = Gets(store)
    store.prefetch(files, 0)
    _settle(store, *files[1:3])
    assert len(gets.ranges) == 2  # two objects' worth of bytes ahead
    gets.clear()
    store.prefetch(files, 2)
    _settle(store, *files[3:5])
    assert len(gets.ranges) == 2
    tiny = bucket.new_store(small_object_bytes=0, prefetch_bytes=1)
    files = discover_sources([bucket.url("b/")], s3=tiny)
    gets = Gets(tiny)
    tiny.prefetch(files, 0)
    _settle(tiny, files[1])  # one file ahead even when it is bigger than prefetch_bytes
    assert len(gets.ranges) == 1


def test_prefetch_does_not_read_a_footer_planning_read(bucket: Bucket) -> None:
    data = _ids_parquet(0, 20_000)
    urls = [bucket.put("f/0.csv", CSV_TEXT), bucket.put("f/1.parquet", data)]
    store = bucket.new_store(small_object_bytes=1024, object_budget_bytes=len(data) // 2)
    files = bucket.discover([bucket.url("f/")])
    assert [f.path for f in files] == urls
    assert read_schema(files[1], s3=store).names == ["id", "n"]  # planning reads the footer
    gets = Gets(store)
    store.prefetch(files, 0)
    _settle(store, files[1])
    assert gets.ranges == [f"bytes=0-{len(data) // 2 - 1}"]  # the beginning only
    got = store.fetched(urls[1], files[1].etag)
    assert got is not None and got.tail == b""
    gets.clear()
    assert read_all(files[1], store).num_rows == 20_000
    assert not any(r.startswith("bytes=0-") for r in gets.ranges)  # the rest, footer known


def test_many_small_parquet_objects_take_at_most_two_requests_each(
    bucket: Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_firehose: LocalFirehose,
    moto_firehose_stream: StreamHandle,
) -> None:
    """A whole run over many small Parquet objects under one prefix: one listing, then at most
    two S3 requests per object (in fact one: the object fetched whole at planning serves the
    format check, the footer and the data), counted on the run's own S3Store client with
    botocore's before-send hook."""
    n = 40
    bucket.put_many(
        {
            f"many/part-{i:03d}.parquet": write_payments(
                tmp_path / f"p{i}.parquet", 1 + 2 * i, 2
            ).read_bytes()
            for i in range(n)
        }
    )
    sent: list[tuple[str, str]] = []

    def counted(s: Any, session: Any) -> S3Store:
        store = S3Store(endpoint_url=s.s3_endpoint_url, region=s.region, session=session)
        store.client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append((request.method, request.url))
        )
        return store

    monkeypatch.setattr(pipeline.run, "s3_store", counted)
    s = settings_for(
        tmp_path,
        [bucket.url("many/")],  # type: ignore[list-item]
        stream=moto_firehose_stream.stream,
        endpoint_url=moto_firehose_stream.endpoint_url,
        s3_endpoint_url=moto_firehose.endpoint_url,
    )
    summary, error = run_plain(s)
    assert error is None, error
    assert summary.actions_sent == 2 * n
    lists = [u for m, u in sent if "list-type=2" in u]
    gets = [u for m, u in sent if m == "GET" and "list-type=2" not in u]
    assert len(lists) == 1 and len(gets) <= 2 * n and len(sent) == len(lists) + len(gets)
    assert len(gets) == n  # one GET per object: fetched whole at planning, read from memory
    assert moto_firehose_stream.receiver.transaction_ids() == expected_ids(1, 2 * n)


# ---------------------------------------------------------------------------------------------
# settings and errors


def test_endpoint_from_environment(
    bucket: Bucket, moto_firehose: LocalFirehose, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = bucket.put("e/a.csv", CSV_TEXT)
    monkeypatch.setenv(s3_store.ENDPOINT_ENV, moto_firehose.endpoint_url)
    store = S3Store()
    try:
        [src] = discover_sources([url], s3=store)
        assert read_all(src, store).num_rows == 2
    finally:
        store.close()


def test_missing_bucket_and_object_name_the_url(bucket: Bucket) -> None:
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x/"
    with pytest.raises(SourceError, match="does not exist") as info:
        bucket.discover([missing_bucket])
    assert missing_bucket in str(info.value) and "NoSuchBucket" in str(info.value)

    url = bucket.put("gone.csv", CSV_TEXT)
    bucket.new_store(cache_bytes=0)  # nothing kept from planning: reading asks S3 again
    [src] = bucket.discover([url])
    bucket.s3.delete_object(Bucket=bucket.name, Key="gone.csv")
    with pytest.raises(SourceError, match="object does not exist") as info:
        list(iter_batches(src, s3=bucket.store))
    assert url in str(info.value)
    with pytest.raises(SourceError, match="object does not exist"):
        bucket.store.read_head(url + ".other", 4)
    with pytest.raises(SourceError, match="not a valid S3 URL"):
        bucket.discover(["s3:///key.csv"])


class _Denied:
    """An S3 client stub answering AccessDenied to everything."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
            raise ClientError(error, name)

        return call

    def get_paginator(self, name: str) -> Any:
        stub = self

        class Paginator:
            def paginate(self, **kwargs: Any) -> Any:
                return stub.list_objects_v2(**kwargs)

        return Paginator()


def test_access_denied_names_the_permission() -> None:
    storage = S3Store(client=_Denied())
    with pytest.raises(SourceError) as info:
        storage.list("s3://locked/prefix/")
    assert "s3://locked/prefix/" in str(info.value) and "s3:ListBucket" in str(info.value)
    with pytest.raises(SourceError) as info:
        storage.list("s3://locked/one.csv")  # listing denied -> HeadObject, also denied
    assert "s3:ListBucket" in str(info.value) and "s3:GetObject" in str(info.value)
    with pytest.raises(SourceError) as info:
        storage.read_head("s3://locked/one.csv", 4)
    assert "s3:GetObject on arn:aws:s3:::locked/one.csv" in str(info.value)
    with pytest.raises(SourceError) as info:
        storage.open_random_access("s3://locked/one.csv")
    assert "s3:GetObject on arn:aws:s3:::locked/one.csv" in str(info.value)
    with (
        pytest.raises(SourceError) as info,
        storage.open_stream("s3://locked/one.csv", etag="abc", size=10) as stream,
    ):
        stream.read()
    assert "s3:GetObject on arn:aws:s3:::locked/one.csv" in str(info.value)


def test_no_credentials(
    bucket: Bucket, moto_firehose: LocalFirehose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = bucket.put("c.csv", CSV_TEXT)
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    store = S3Store(endpoint_url=moto_firehose.endpoint_url, session=boto3.Session())
    with pytest.raises(SourceError, match="no AWS credentials") as info:
        discover_sources([url], s3=store)
    assert url in str(info.value)
    with pytest.raises(SourceError, match="no AWS credentials"):
        store.open_random_access(url)
    assert "testing" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# objects replaced during the run: every read is pinned to the ETag listed at planning


def _assert_changed(exc: BaseException, url: str) -> None:
    """The error a replaced object gives: its own type (not retried, exit 1), the URL, what
    happened and what to do."""
    assert isinstance(exc, SourceChangedError), repr(exc)
    assert exc.exit_code == 1
    message = str(exc)
    assert message.startswith(f"{url}: the object changed during the run")
    assert "Nothing of the new version was sent" in message
    assert "the checkpoint holds what was delivered" in message
    assert f"--reprocess {url}" in message


def _ids_parquet(first: int, n: int = 50_000) -> bytes:
    """Fixed-width columns, no dictionary, compression or statistics: two versions with other
    values have the same layout, byte for byte, so stray reads of a new version would decode."""
    table = pa.table({"id": pa.array(range(first, first + n), pa.int64()), "n": range(n)})
    return parquet_bytes(
        table,
        row_group_size=5_000,
        use_dictionary=False,
        compression="NONE",
        write_statistics=False,
    )


@pytest.mark.parametrize("when", ["before", "while"])
def test_parquet_object_replaced_during_the_run_stops_that_file(bucket: Bucket, when: str) -> None:
    """Random access (footer, then column chunks): once the object is replaced, the next GET
    fails (412) instead of reading the new version's bytes at the old footer's offsets."""
    old, new = _ids_parquet(0), _ids_parquet(1_000_000)
    assert len(old) == len(new)
    bucket.new_store(small_object_bytes=4096)  # read with ranged GETs, not fetched whole
    url = bucket.put("r/p.parquet", old)
    [src] = bucket.discover([url])  # planned: the ETag and size of `old`
    if when == "before":
        bucket.put("r/p.parquet", new)
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for batch in iter_batches(src, s3=bucket.store, batch_rows=5_000):
            seen.extend(batch.column("id").to_pylist())
            if when == "while" and len(seen) == 5_000:
                bucket.put("r/p.parquet", new)
    _assert_changed(info.value, url)
    assert seen == list(range(len(seen)))  # only rows of the planned version
    assert len(seen) == (0 if when == "before" else 5_000)


def _text_rows(fmt: str, first: int, n: int) -> bytes:
    if fmt == "ndjson":
        return b"".join(b'{"id": "%09d", "n": "%06d"}\n' % (first + i, i) for i in range(n))
    return b"id,n\n" + b"".join(b"%09d,%06d\n" % (first + i, i) for i in range(n))


@pytest.mark.parametrize("when", ["before", "while"])
@pytest.mark.parametrize("name", ["r/u.csv", "r/u.jsonl", "r/u.csv.gz"])
def test_text_object_replaced_during_the_run_stops_that_file(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch, name: str, when: str
) -> None:
    """Sequential reads (one ranged GET per buffer, through decompression and pyarrow's
    background block reader): after the object is replaced, the next GET fails."""
    small = 64 << 10  # small GETs and blocks, so most of the object is read after batch 1
    monkeypatch.setattr(s3_store, "S3_STREAM_BUFFER_BYTES", small)
    monkeypatch.setattr(file_access, "IO_BUFFER_BYTES", small)
    monkeypatch.setattr(csv_dialect, "CSV_BLOCK_BYTES", small)
    monkeypatch.setattr(csv_dialect, "CSV_STREAM_BLOCK_BYTES", small)
    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", small)
    bucket.new_store(small_object_bytes=4096)  # read with ranged GETs, not fetched whole
    fmt = "ndjson" if ".jsonl" in name else "csv"
    rows = 200_000
    old, new = _text_rows(fmt, 0, rows), _text_rows(fmt, 500_000_000, rows)
    if name.endswith(".gz"):
        old, new = gzip.compress(old, 1), gzip.compress(new, 1)
    url = bucket.put(name, old)
    [src] = bucket.discover([url])
    if when == "before":
        bucket.put(name, new)
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for batch in iter_batches(src, s3=bucket.store, text_columns=["id"], batch_rows=10_000):
            seen.extend(int(v) for v in batch.column("id").to_pylist())
            if when == "while" and len(seen) >= 10_000 and len(seen) - batch.num_rows < 10_000:
                bucket.put(name, new)
    _assert_changed(info.value, url)
    assert seen == list(range(len(seen)))  # only rows of the planned version
    assert len(seen) < rows
    if when == "while":
        assert len(seen) >= 10_000


@pytest.mark.parametrize("when", ["before the prefetch", "after the prefetch"])
def test_prefetched_next_object_is_pinned_to_its_planned_etag(bucket: Bucket, when: str) -> None:
    """The prefetcher reads the next object with the planned ETag too: an object replaced
    before it is fetched is not prefetched (the reader's own read reports it), and one
    replaced after its beginning was fetched fails at the first GET past that beginning
    instead of joining the old beginning to the new rest."""
    old, new = _ids_parquet(0), _ids_parquet(1_000_000)
    urls = [bucket.put("n/0.csv", CSV_TEXT), bucket.put("n/1.parquet", old)]
    # the beginning and the footer of the Parquet object are prefetched, not all of it
    store = bucket.new_store(small_object_bytes=4096, object_budget_bytes=len(old) // 3)
    files = bucket.discover([bucket.url("n/")])
    assert [f.path for f in files] == urls
    if when == "before the prefetch":
        bucket.put("n/1.parquet", new)
    store.prefetch(files, 0)
    if when == "after the prefetch":
        got = store.fetched(urls[1], files[1].etag, wait=True)
        assert got is not None and len(got.head) > 4 and got.tail.endswith(b"PAR1")
        bucket.put("n/1.parquet", new)
    else:
        assert store.fetched(urls[1], files[1].etag, wait=True) is None  # not prefetched
    store.prefetch(files, 1)  # the engine starts file 1
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for batch in iter_batches(files[1], s3=store, batch_rows=5_000):
            seen.extend(batch.column("id").to_pylist())
    _assert_changed(info.value, urls[1])
    assert seen == list(range(len(seen))) and len(seen) < 50_000


def test_object_replaced_after_a_whole_fetch_is_read_as_planned(bucket: Bucket) -> None:
    """A small object fetched whole (at planning, or by the prefetcher) before it was replaced
    is read entirely from memory: the planned version, consistent with the identity the
    checkpoint records."""
    bucket.put("w/0.csv", CSV_TEXT)
    bucket.put("w/1.csv", CSV_TEXT)
    files = bucket.discover([bucket.url("w/")])  # planning fetched both whole
    bucket.put("w/1.csv", b"id,amount,note\n999,9,other\n")
    table = read_all(files[1], bucket.store, text_columns=["id"])
    assert table.column("id").to_pylist() == ["000123", "000124"]

    bucket.put("w/1.csv", CSV_TEXT)  # the planned version again (the same ETag)
    store = bucket.new_store()  # a store that did not plan: what the prefetcher fetched
    store.prefetch(files, 0)
    fetched = store.fetched(files[1].path, files[1].etag, wait=True)
    assert fetched is not None and fetched.whole
    bucket.put("w/1.csv", b"id,amount,note\n999,9,other\n")
    table = read_all(files[1], store, text_columns=["id"])
    assert table.column("id").to_pylist() == ["000123", "000124"]


class _ReplaceAfter:
    """A progress listener that replaces an object once `rows` rows were committed."""

    def __init__(self, rows: int, replace: Any) -> None:
        self.rows, self.replace, self.done = rows, replace, 0

    def rows_done(self, n: int) -> None:
        before, self.done = self.done, self.done + n
        if before < self.rows <= self.done:
            self.replace()


def test_run_stops_at_an_object_replaced_mid_read_and_the_rerun_says_what_to_do(
    bucket: Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_firehose: LocalFirehose,
    moto_firehose_stream: StreamHandle,
) -> None:
    """The whole chain through the pipeline: file b is replaced after its first chunk was
    delivered. The run delivers a, stops b with SourceChangedError (exit 1, not retried) and
    commits only b's chunks of the planned version; the rerun stops before sending, saying b
    changed since it was partly delivered; --reprocess b then sends the new version."""
    a = write_payments(tmp_path / "a.parquet", 1, 3_000)
    b_old = write_payments(tmp_path / "b_old.parquet", 10_001, 40_000)  # 8 row groups
    b_new = write_payments(tmp_path / "b_new.parquet", 100_001, 40_000)
    bucket.put("in/a.parquet", a.read_bytes())
    b_url = bucket.put("in/b.parquet", b_old.read_bytes())

    # b is prefetched while a is sent, but only its first quarter (a smaller budget than b)
    def store(s: Any, session: Any) -> S3Store:
        return S3Store(
            endpoint_url=s.s3_endpoint_url,
            region=s.region,
            session=session,
            small_object_bytes=4096,
            object_budget_bytes=b_old.stat().st_size // 4,
        )

    monkeypatch.setattr(pipeline.run, "s3_store", store)
    s = settings_for(
        tmp_path,
        [bucket.url("in/")],  # type: ignore[list-item]
        stream=moto_firehose_stream.stream,
        endpoint_url=moto_firehose_stream.endpoint_url,
        s3_endpoint_url=moto_firehose.endpoint_url,
    )
    replace = _ReplaceAfter(3_000 + 1_000, lambda: bucket.put("in/b.parquet", b_new.read_bytes()))
    run = Run(s, progress=replace)
    error: BaseException | None = None
    try:
        plan = run.prepare()
        for i in range(len(plan.files)):
            run.process_file(i)
    except Exception as exc:
        error = exc
    summary = run.finish(error)
    assert error is not None
    _assert_changed(error, b_url)
    old_ids = expected_ids(1, 3_000) | expected_ids(10_001, 40_000)
    delivered = moto_firehose_stream.receiver.transaction_ids()
    assert expected_ids(1, 3_000) <= delivered <= old_ids  # nothing of the new version
    prog = file_progress(tmp_path / "ckpt", "test-job", b_url)
    assert prog is not None
    assert not prog.complete and 1_000 <= prog.rows_sent == summary.actions_sent - 3_000 < 40_000
    assert prog.identity["etag"] == plan.files[1].src.etag  # the version its rows came from

    summary, error = run_plain(s)
    assert isinstance(error, CheckpointMismatchError) and error.exit_code == 2
    assert "changed since they were (partly) delivered" in str(error) and b_url in str(error)
    assert "--reprocess" in str(error) and summary.actions_sent == 0

    summary, error = run_plain(s.model_copy(update={"reprocess": [b_url]}))
    assert error is None, error
    delivered = moto_firehose_stream.receiver.transaction_ids()
    assert expected_ids(100_001, 40_000) <= delivered
    assert delivered <= old_ids | expected_ids(100_001, 40_000)
