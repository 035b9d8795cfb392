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

from connectors import ndjson, readers, sources, storage
from connectors.readers import iter_batches, read_schema
from connectors.sources import SourceFile, discover_sources
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
    def __init__(self, s3: Any, name: str) -> None:
        self.s3, self.name = s3, name

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
    storage.configure_s3(endpoint_url=moto_firehose.endpoint_url, region=moto_firehose.region)
    try:
        yield Bucket(s3, name)
    finally:
        storage.configure_s3()
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


def read_all(src: SourceFile, **kwargs: Any) -> pa.Table:
    return pa.Table.from_batches(list(iter_batches(src, **kwargs)))


class Gets:
    """The GetObject calls connectors.storage makes (seen through botocore's event hooks on
    its real client): the Range asked for and the bytes answered, in order."""

    def __init__(self) -> None:
        self.ranges: list[str] = []
        self.sizes: list[int] = []
        events = storage._client().meta.events
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
        found = storage.list_s3(spec)
        assert keys(found, bucket) == names  # > 1,000: several pages, in key order
        assert all(info.size == len(CSV_TEXT) and info.etag for info in found)
        assert '"' not in found[0].etag and found[0].last_modified is not None
    # the whole bucket
    assert len(storage.list_s3(bucket.url())) == len(names) + 2


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
        return keys(storage.list_s3(bucket.url(pattern)), bucket)

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
    found = discover_sources([bucket.url("2024/**/*.csv"), bucket.url("2024/01/a.csv")])
    assert keys(found, bucket) == ["2024/01/a.csv", "2024/02/b.csv", "2024/02/deep/er/d.csv"]
    assert {(s.format, s.compression) for s in found} == {("csv", None)}

    for spec in [bucket.url("missing.csv"), bucket.url("nothing/"), bucket.url("*.parquet")]:
        with pytest.raises(SourceError, match="matched no data objects") as info:
            discover_sources([spec])
        assert repr(spec) in str(info.value)


def test_identity_is_size_and_etag_and_changes_on_overwrite(bucket: Bucket) -> None:
    url = bucket.put("in/usage.csv", CSV_TEXT)
    [src] = discover_sources([url])
    assert src.path == url and src.key == url and src.mtime_ns == 0
    assert src.size == len(CSV_TEXT) and src.etag
    assert src.identity() == {"size": len(CSV_TEXT), "etag": src.etag}

    bucket.put("in/usage.csv", CSV_TEXT.replace(b"hello", b"HELLO"))  # same size, new content
    [again] = discover_sources([url])
    assert again.size == src.size and again.identity() != src.identity()

    # content detection looks at the object as it is now, not at bytes read before
    url = bucket.put("in/export", NDJSON_TEXT)
    assert [s.format for s in discover_sources([url])] == ["ndjson"]
    bucket.put("in/export", parquet_bytes(pa.table({"a": [1]})))
    assert [s.format for s in discover_sources([url])] == ["parquet"]
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

    remote = discover_sources([bucket.url("x/")])
    local = discover_sources([str(tmp_path / "x")])
    assert len(remote) == len(local) == len(files)
    for r, loc in zip(remote, local, strict=True):
        assert r.path.rsplit("/", 1)[1] == Path(loc.path).name
        assert (r.format, r.compression, r.size) == (loc.format, loc.compression, loc.size)
        for kwargs in [{}, {"text_columns": ["id"]}]:
            assert read_schema(r, **kwargs) == read_schema(loc, **kwargs)
            assert read_all(r, **kwargs).equals(read_all(loc, **kwargs))
    assert [(s.path.rsplit("/", 1)[1], s.format, s.compression) for s in remote] == [
        ("0000_part_00.gz", "ndjson", "gzip"),
        ("a.snappy.parquet", "parquet", None),
        ("b.csv.gz", "csv", "gzip"),
        ("c.jsonl", "ndjson", None),
        ("d", "parquet", None),
        ("e", "ndjson", "gzip"),
    ]
    parquet = remote[1]
    got = read_all(parquet, columns=["amount", "id"], batch_rows=700)
    assert got.column_names == ["amount", "id"] and got.num_rows == 5_000


def test_open_parquet_closes_its_file(bucket: Bucket) -> None:
    url = bucket.put("p.parquet", parquet_bytes(pa.table({"a": [1, 2]})))
    opened: list[pa.NativeFile] = []
    real = storage.open_random_access

    def spy(path: str, **kwargs: Any) -> pa.NativeFile:
        opened.append(real(path, **kwargs))
        return opened[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "open_random_access", spy)
        with storage.open_parquet(url) as pf:
            assert pf.metadata.num_rows == 2
    assert opened and opened[0].closed


def test_large_csv_streams_with_bounded_memory(bucket: Bucket) -> None:
    row = b"%08d,2024-03-01T04:45:42.914Z,%d.25,some text to make rows longer than short\n"
    data = b"id,ts,amount,note\n" + b"".join(row % (i, i) for i in range(700_000))
    size = len(data)
    assert size > 50_000_000
    url = bucket.put("big/usage.csv", data)
    del data
    [src] = discover_sources([url])

    gets = Gets()  # every read from S3 is one ranged GET
    reads = gets.sizes

    # the storage layer: the first bytes come after one ranged GET, and it holds about one
    # GET's worth of memory whatever the object's size
    previous = pa.default_memory_pool()
    pool = _keep(pa.proxy_memory_pool(previous))
    pa.set_memory_pool(pool)
    try:
        total = 0
        with storage.open_stream(url) as stream:
            while chunk := stream.read(1 << 20):
                if total == 0:
                    assert reads == [storage.S3_STREAM_BUFFER_BYTES]
                total += len(chunk)
                del chunk
    finally:
        pa.set_memory_pool(previous)
    assert total == size
    assert pool.max_memory() <= 3 * storage.S3_STREAM_BUFFER_BYTES, pool.max_memory()
    assert all(r.startswith("bytes=") for r in gets.ranges)

    # the readers stream it in batches over ranged GETs of bounded size. (pyarrow's CSV
    # reader reads up to 32 blocks ahead in the background: its own memory bound, on top.)
    gets.clear()
    rows = 0
    for batch in iter_batches(src, text_columns=["id"], batch_rows=50_000):
        assert batch.num_rows <= 50_000
        rows += batch.num_rows
    assert rows == 700_000
    assert max(reads) <= storage.S3_STREAM_BUFFER_BYTES and len(reads) > size // max(reads)


# ---------------------------------------------------------------------------------------------
# prefetch


def _settle(prefetcher: storage.Prefetcher, *urls: str) -> None:
    """Wait until the prefetches of `urls` are done."""
    deadline = time.monotonic() + 30
    while any(prefetcher.peek(url) is None for url in urls):
        assert time.monotonic() < deadline, "prefetch did not finish"
        time.sleep(0.01)


def test_prefetch_serves_the_next_object(bucket: Bucket) -> None:
    big_csv = b"id,n\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(400_000))  # ~5 MB
    table = pa.table({"id": [str(i) for i in range(200_000)], "n": range(200_000)})
    big_parquet = parquet_bytes(table, row_group_size=20_000)
    urls = [
        bucket.put("p/0.csv", CSV_TEXT),
        bucket.put("p/1.csv", big_csv),
        bucket.put("p/2.parquet", big_parquet),
        bucket.put("p/3.jsonl", NDJSON_TEXT),
    ]
    files = discover_sources([bucket.url("p/")])
    assert [f.path for f in files] == urls
    gets = Gets()
    prefetcher = storage.Prefetcher(budget=1 << 20)  # smaller than the objects
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_PREFETCHER", prefetcher)
        storage.prefetch_hint(files, 0)
        got = prefetcher.take(urls[1], files[1].etag)
        assert got is not None and got.size == len(big_csv) and len(got.head) == 1 << 20
        assert got.tail == b"" and got.etag == files[1].etag
        assert prefetcher.take(urls[1], files[1].etag) is got  # for every reader of file 1
        assert prefetcher.take(urls[1], "another-etag") is None  # pinned to the planned ETag
        assert gets.ranges == [f"bytes=0-{(1 << 20) - 1}"]  # size known: no HeadObject

        # the engine hints file i when it starts it, then opens it: what was prefetched for
        # file i stays until its reader takes it, while file i + 1 is fetched
        storage.prefetch_hint(files, 0)
        storage.prefetch_hint(files, 1)
        _settle(prefetcher, urls[1], urls[2])
        gets.clear()
        with storage.open_stream(urls[1], etag=files[1].etag, size=files[1].size) as stream:
            assert stream.read() == big_csv
        assert gets.ranges == [f"bytes={1 << 20}-{len(big_csv) - 1}"]  # only the rest
        with storage.open_random_access(urls[1]) as f:
            assert f.read_at(10, len(big_csv) - 10) == big_csv[-10:]

        got = prefetcher.take(urls[2], files[2].etag)
        assert got is not None and got.tail.endswith(b"PAR1") and 0 < len(got.head) < 1 << 20
        assert len(got.tail) == storage.PARQUET_TAIL_BYTES  # the footer in one GET
        storage.prefetch_hint(files, 2)
        assert prefetcher.take(urls[1], files[1].etag) is None  # one object ahead only
        storage.prefetch_hint(files, 1)
        _settle(prefetcher, urls[2])
        gets.clear()
        assert read_all(files[2]).equals(pq.read_table(io.BytesIO(big_parquet)))
        tail_range = f"bytes={len(big_parquet) - storage.PARQUET_TAIL_BYTES}-"
        assert gets.ranges and not any(r.startswith(("bytes=0-", tail_range)) for r in gets.ranges)

        storage.prefetch_hint(files, 2)
        got = prefetcher.take(urls[3], files[3].etag)
        assert got is not None and got.whole and got.head == NDJSON_TEXT
        storage.prefetch_hint(files, 1)
        storage.prefetch_hint(files, 2)
        _settle(prefetcher, urls[2], urls[3])
        gets.clear()
        assert read_all(files[3]).num_rows == 2
        assert gets.ranges == []  # the whole object was in memory
        gets.clear()
        storage.prefetch_hint(files, 3)  # the last one: nothing more to prefetch
        assert prefetcher.take(urls[3], files[3].etag) is not None  # its own: kept for it
        local = [SourceFile(f"/local/{n}.csv", "csv", None, 10, 1) for n in "ab"]
        storage.prefetch_hint(local, 0)  # local: nothing to do, the S3 object is let go
        assert prefetcher.take("/local/b.csv", None) is None
        assert prefetcher.take(urls[3], files[3].etag) is None
        assert gets.ranges == []


# ---------------------------------------------------------------------------------------------
# settings and errors


def test_endpoint_from_environment(
    bucket: Bucket, moto_firehose: LocalFirehose, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = bucket.put("e/a.csv", CSV_TEXT)
    monkeypatch.setenv(storage.ENDPOINT_ENV, moto_firehose.endpoint_url)
    storage.configure_s3()
    [src] = discover_sources([url])
    assert read_all(src).num_rows == 2


def test_missing_bucket_and_object_name_the_url(bucket: Bucket) -> None:
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x/"
    with pytest.raises(SourceError, match="does not exist") as info:
        discover_sources([missing_bucket])
    assert missing_bucket in str(info.value) and "NoSuchBucket" in str(info.value)

    url = bucket.put("gone.csv", CSV_TEXT)
    [src] = discover_sources([url])
    bucket.s3.delete_object(Bucket=bucket.name, Key="gone.csv")
    with pytest.raises(SourceError, match="object does not exist") as info:
        list(iter_batches(src))
    assert url in str(info.value)
    with pytest.raises(SourceError, match="object does not exist"):
        storage.read_head(url + ".other", 4)
    with pytest.raises(SourceError, match="not a valid S3 URL"):
        discover_sources(["s3:///key.csv"])


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


def test_access_denied_names_the_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_client", _Denied)
    with pytest.raises(SourceError) as info:
        storage.list_s3("s3://locked/prefix/")
    assert "s3://locked/prefix/" in str(info.value) and "s3:ListBucket" in str(info.value)
    with pytest.raises(SourceError) as info:
        storage.list_s3("s3://locked/one.csv")  # listing denied -> HeadObject, also denied
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
    storage.configure_s3(endpoint_url=moto_firehose.endpoint_url, session=boto3.Session())
    with pytest.raises(SourceError, match="no AWS credentials") as info:
        discover_sources([url])
    assert url in str(info.value)
    with pytest.raises(SourceError, match="no AWS credentials"):
        storage.open_random_access(url)
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
    url = bucket.put("r/p.parquet", old)
    [src] = discover_sources([url])  # planned: the ETag and size of `old`
    if when == "before":
        bucket.put("r/p.parquet", new)
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for batch in iter_batches(src, batch_rows=5_000):
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
    monkeypatch.setattr(storage, "S3_STREAM_BUFFER_BYTES", small)
    monkeypatch.setattr(sources, "IO_BUFFER_BYTES", small)
    monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", small)
    monkeypatch.setattr(readers, "CSV_STREAM_BLOCK_BYTES", small)
    monkeypatch.setattr(ndjson, "NDJSON_BLOCK_BYTES", small)
    fmt = "ndjson" if ".jsonl" in name else "csv"
    rows = 200_000
    old, new = _text_rows(fmt, 0, rows), _text_rows(fmt, 500_000_000, rows)
    if name.endswith(".gz"):
        old, new = gzip.compress(old, 1), gzip.compress(new, 1)
    url = bucket.put(name, old)
    [src] = discover_sources([url])
    if when == "before":
        bucket.put(name, new)
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for batch in iter_batches(src, text_columns=["id"], batch_rows=10_000):
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
    files = discover_sources([bucket.url("n/")])
    assert [f.path for f in files] == urls
    prefetcher = storage.Prefetcher(budget=len(old) // 3)  # the beginning and the footer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_PREFETCHER", prefetcher)
        if when == "before the prefetch":
            bucket.put("n/1.parquet", new)
        storage.prefetch_hint(files, 0)
        if when == "after the prefetch":
            got = prefetcher.take(urls[1], files[1].etag)  # waits for the prefetch
            assert got is not None and len(got.head) > 4 and got.tail.endswith(b"PAR1")
            bucket.put("n/1.parquet", new)
        storage.prefetch_hint(files, 1)  # the engine starts file 1
        seen: list[int] = []
        with pytest.raises(SourceError) as info:
            for batch in iter_batches(files[1], batch_rows=5_000):
                seen.extend(batch.column("id").to_pylist())
    _assert_changed(info.value, urls[1])
    assert seen == list(range(len(seen))) and len(seen) < 50_000


def test_object_replaced_after_a_whole_prefetch_is_read_as_planned(bucket: Bucket) -> None:
    """A small object prefetched whole before it was replaced is read entirely from memory:
    the planned version, consistent with the identity the checkpoint records."""
    urls = [bucket.put("w/0.csv", CSV_TEXT), bucket.put("w/1.csv", CSV_TEXT)]
    files = discover_sources([bucket.url("w/")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_PREFETCHER", storage.Prefetcher())
        storage.prefetch_hint(files, 0)
        _settle(storage._PREFETCHER, urls[1])
        bucket.put("w/1.csv", b"id,amount,note\n999,9,other\n")
        storage.prefetch_hint(files, 1)
        table = read_all(files[1], text_columns=["id"])
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
    monkeypatch.setattr(storage, "_PREFETCHER", storage.Prefetcher(b_old.stat().st_size // 4))
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
