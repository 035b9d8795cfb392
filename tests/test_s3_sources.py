"""Sources on S3 (moto server): listing, globs, identity, reading, errors, memory, prefetch."""

from __future__ import annotations

import gzip
import io
import random
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

from connectors import storage
from connectors.readers import iter_batches, read_schema
from connectors.sources import SourceFile, discover_sources
from moesif_backfill.errors import SourceError
from tests.standins.moto_firehose import LocalFirehose

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

    def spy(path: str) -> pa.NativeFile:
        opened.append(real(path))
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

    reads: list[int] = []  # size of every read from S3 (each one ranged GET)
    real_open = storage._open_s3_file

    class Counting(io.RawIOBase):
        def __init__(self, f: pa.NativeFile) -> None:
            self.f = f

        def readable(self) -> bool:
            return True

        def read(self, n: int | None = -1) -> bytes:
            out: bytes = self.f.read(n if n is not None and n >= 0 else None)
            reads.append(len(out))
            return out

        def close(self) -> None:
            self.f.close()
            super().close()

    previous = pa.default_memory_pool()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_open_s3_file", lambda p: pa.PythonFile(Counting(real_open(p))))

        # the storage layer: the first bytes come after one ranged GET, and it holds about one
        # GET's worth of memory whatever the object's size
        pool = _keep(pa.proxy_memory_pool(previous))
        pa.set_memory_pool(pool)
        try:
            total = 0
            with storage.open_stream(url) as stream:
                while chunk := stream.read(1 << 20):
                    if total == 0:
                        assert sum(reads) <= storage.S3_STREAM_BUFFER_BYTES
                    total += len(chunk)
                    del chunk
        finally:
            pa.set_memory_pool(previous)
        assert total == size
        assert pool.max_memory() <= 3 * storage.S3_STREAM_BUFFER_BYTES, pool.max_memory()

        # the readers stream it in batches over ranged GETs of bounded size. (pyarrow's CSV
        # reader reads up to 32 blocks ahead in the background: its own memory bound, on top.)
        reads.clear()
        rows = 0
        for batch in iter_batches(src, text_columns=["id"], batch_rows=50_000):
            assert batch.num_rows <= 50_000
            rows += batch.num_rows
    assert rows == 700_000
    assert max(reads) <= storage.S3_STREAM_BUFFER_BYTES and len(reads) > size // max(reads)


# ---------------------------------------------------------------------------------------------
# prefetch


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
    prefetcher = storage.Prefetcher(budget=1 << 20)  # smaller than the objects
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "_PREFETCHER", prefetcher)
        storage.prefetch_hint(urls, 0)
        got = prefetcher.take(urls[1])
        assert got is not None and got.size == len(big_csv) and len(got.head) == 1 << 20
        assert got.tail == b""
        with storage.open_stream(urls[1]) as stream:
            assert stream.read() == big_csv
        with storage.open_random_access(urls[1]) as f:
            assert f.read_at(10, len(big_csv) - 10) == big_csv[-10:]

        storage.prefetch_hint(urls, 1)
        got = prefetcher.take(urls[2])
        assert got is not None and got.tail.endswith(b"PAR1") and 0 < len(got.head) < 1 << 20
        assert prefetcher.take(urls[1]) is None  # one object ahead only
        [src] = discover_sources([urls[2]])
        assert read_all(src).equals(pq.read_table(io.BytesIO(big_parquet)))

        storage.prefetch_hint(urls, 2)
        got = prefetcher.take(urls[3])
        assert got is not None and got.whole and got.head == NDJSON_TEXT
        [src] = discover_sources([urls[3]])
        assert read_all(src).num_rows == 2
        storage.prefetch_hint(urls, 3)  # the last one: nothing to prefetch
        assert prefetcher.take(urls[3]) is None
        storage.prefetch_hint(["/local/a.csv", "/local/b.csv"], 0)  # local: nothing to do
        assert prefetcher.take("/local/b.csv") is None


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
    error = storage._arrow_error(
        "s3://locked/one.csv",
        OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."),
    )
    assert "s3:GetObject" in str(error) and "s3://locked/one.csv" in str(error)


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
