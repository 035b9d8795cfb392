"""Local sources: discovery, format detection and the bounded-memory Arrow readers."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import csv_dialect, ndjson, ndjson_values
from connectors.discovery import discover_sources
from connectors.readers import iter_batches, read_schema
from connectors.source_file import SourceFile
from moesif_backfill.errors import SourceError

# ---------------------------------------------------------------------------------------------
# helpers


def write_bytes(path: Path, data: bytes, compression: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.output_stream(str(path), compression=compression) as out:
        out.write(data)
    return path


def write_parquet(path: Path, table: pa.Table, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path), **kwargs)
    return path


def one(path: Path) -> SourceFile:
    [src] = discover_sources([str(path)])
    return src


def read_all(src: SourceFile, **kwargs: Any) -> pa.Table:
    batches = list(iter_batches(src, **kwargs))
    schemas = {b.schema for b in batches}
    assert len(schemas) <= 1, schemas
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


def names(sources: list[SourceFile], root: Path) -> list[str]:
    return [os.path.relpath(s.path, root) for s in sources]


CSV_TEXT = b'id,amount,note\n"000123",1.50,hello\n000124,2,"a, b"\n'
NDJSON_TEXT = b'{"id": "000123", "amount": 1.5, "note": "hello"}\n{"id": "000124", "amount": 2}\n'


# ---------------------------------------------------------------------------------------------
# discovery


def test_single_file_is_absolute_with_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_bytes(tmp_path / "usage.csv", CSV_TEXT)
    monkeypatch.chdir(tmp_path)
    [src] = discover_sources(["usage.csv"])
    assert src.path == str(path) and os.path.isabs(src.path)
    assert (src.format, src.compression) == ("csv", None)
    st = path.stat()
    assert src.size == st.st_size and src.mtime_ns == st.st_mtime_ns
    assert src.identity() == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert src.key == src.path


def test_directory_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "unload"
    for rel in [
        "b.csv",
        "a/z.parquet.crc",
        "a/y.jsonl",
        "a/c/x.csv.gz",
        "_SUCCESS",
        "_committed_123",
        ".hidden.csv",
        ".spark/x.csv",
        "_temporary/0/x.csv",
    ]:
        write_bytes(
            root / rel,
            NDJSON_TEXT if "json" in rel else CSV_TEXT,
            "gzip" if rel.endswith(".gz") else None,
        )
    write_parquet(root / "a/z.parquet", pa.table({"id": ["1"]}))
    found = discover_sources([str(root)])
    assert names(found, root) == ["a/c/x.csv.gz", "a/y.jsonl", "a/z.parquet", "b.csv"]
    assert [(s.format, s.compression) for s in found] == [
        ("csv", "gzip"),
        ("ndjson", None),
        ("parquet", None),
        ("csv", None),
    ]


def test_globs_recursive_and_deduplicated(tmp_path: Path) -> None:
    for rel in [
        "2024/01/a.csv",
        "2024/02/b.csv",
        "2024/02/_tmp/c.csv",
        "2024/02/notes.csv",
        "other/d.csv",
    ]:
        write_bytes(tmp_path / rel, CSV_TEXT)
    found = discover_sources(
        [
            str(tmp_path / "2024/**/*.csv"),
            str(tmp_path / "2024/01"),  # overlaps with the glob
            str(tmp_path / "2024/02/b.csv"),
        ]
    )
    assert names(found, tmp_path) == ["2024/01/a.csv", "2024/02/b.csv", "2024/02/notes.csv"]
    # a glob matching directories expands them like a directory spec
    found = discover_sources([str(tmp_path / "20*")])
    assert len(found) == 3


def test_specs_matching_nothing_name_the_spec(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_bytes(tmp_path / "only_hidden/_SUCCESS", b"")
    for spec in [
        str(tmp_path / "missing.csv"),
        str(tmp_path / "empty"),
        str(tmp_path / "only_hidden"),
        str(tmp_path / "*.parquet"),
    ]:
        with pytest.raises(SourceError, match="check") as info:
            discover_sources([spec])
        assert repr(spec) in str(info.value)
    with pytest.raises(SourceError, match="No input"):
        discover_sources([])


def test_unknown_format_names_file_and_extensions(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "data/readme.txt", b"just some text\n")
    for spec in [path, path.parent]:
        with pytest.raises(SourceError) as info:
            discover_sources([str(spec)])
        message = str(info.value)
        assert str(path) in message and ".parquet" in message and ".csv.gz" in message


def test_extensions(tmp_path: Path) -> None:
    cases = {
        "a.CSV": ("csv", None),
        "b.csv.zst": ("csv", "zstd"),
        "c.json": ("ndjson", None),
        "d.ndjson.gz": ("ndjson", "gzip"),
        "e.jsonl.zstd": ("ndjson", "zstd"),
        "f.snappy.parquet": ("parquet", None),
        "g.pq": ("parquet", None),
    }
    for name, (fmt, comp) in cases.items():
        path = tmp_path / name
        if fmt == "parquet":
            write_parquet(path, pa.table({"id": ["1"]}))
        else:
            write_bytes(path, CSV_TEXT if fmt == "csv" else NDJSON_TEXT, comp)
        src = one(path)
        assert (src.format, src.compression) == (fmt, comp), name


def test_content_sniffing(tmp_path: Path) -> None:
    write_parquet(tmp_path / "part-00000", pa.table({"id": ["1"]}))
    with (
        open(tmp_path / "blob.bin", "wb") as raw,
        gzip.GzipFile("usage.csv", "wb", fileobj=raw) as gz,
    ):
        gz.write(CSV_TEXT)  # the gzip header keeps the original name "usage.csv"
    write_bytes(tmp_path / "0000_part_00.gz", NDJSON_TEXT, "gzip")  # no inner name: sniffed
    write_bytes(tmp_path / "events.zst", NDJSON_TEXT, "zstd")
    write_bytes(tmp_path / "events.log", NDJSON_TEXT)
    write_bytes(tmp_path / "plain.csv", CSV_TEXT, "gzip")  # compressed despite its name
    detected = {
        os.path.basename(s.path): (s.format, s.compression)
        for s in discover_sources([str(tmp_path)])
    }
    assert detected == {
        "part-00000": ("parquet", None),
        "blob.bin": ("csv", "gzip"),
        "0000_part_00.gz": ("ndjson", "gzip"),
        "events.zst": ("ndjson", "zstd"),
        "events.log": ("ndjson", None),
        "plain.csv": ("csv", "gzip"),
    }
    assert read_all(one(tmp_path / "blob.bin"), text_columns=["id"])["id"].to_pylist() == [
        "000123",
        "000124",
    ]


def test_detection_errors(tmp_path: Path) -> None:
    fake = write_bytes(tmp_path / "a.csv.gz", CSV_TEXT)
    with pytest.raises(SourceError, match="gzip") as info:
        discover_sources([str(fake)])
    assert str(fake) in str(info.value)
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["1"]}), buf)
    packed = write_bytes(tmp_path / "b.parquet.gz", buf.getvalue(), "gzip")
    with pytest.raises(SourceError, match="decompress it first"):
        discover_sources([str(packed)])


# ---------------------------------------------------------------------------------------------
# formats and compression


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_text_formats_with_compression(tmp_path: Path, fmt: str, compression: str | None) -> None:
    suffix = {"csv": ".csv", "ndjson": ".jsonl"}[fmt] + {None: "", "gzip": ".gz", "zstd": ".zst"}[
        compression
    ]
    src = one(
        write_bytes(
            tmp_path / f"data{suffix}", CSV_TEXT if fmt == "csv" else NDJSON_TEXT, compression
        )
    )
    assert src.compression == compression
    table = read_all(src, text_columns=["id"])
    assert table.column_names == ["id", "amount", "note"]
    assert table["id"].to_pylist() == ["000123", "000124"]
    assert table["amount"].to_pylist() == [1.5, 2.0]
    assert table.schema == read_schema(src, text_columns=["id"])


def test_parquet_keeps_stored_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "name": ["a", "b", None],
            "amount": pa.array([1.5, None, 3.0]),
        }
    )
    src = one(write_parquet(tmp_path / "t.parquet", table, row_group_size=2))
    assert read_schema(src) == table.schema.remove_metadata()
    got = read_all(src, text_columns=["id"])  # no cast for Parquet
    assert got.equals(table)
    sel = read_all(src, columns=["amount", "id"])
    assert sel.column_names == ["amount", "id"] and sel["id"].to_pylist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# CSV semantics


def test_csv_null_convention_for_string_and_numeric_columns(tmp_path: Path) -> None:
    src = one(
        write_bytes(tmp_path / "n.csv", b'key,s,n,qn\n"k1","",,""\n"k2",,7,""\n"k3",x,8,"5"\n')
    )
    table = read_all(src, text_columns=["key"])
    assert table["s"].to_pylist() == ["", None, "x"]  # "" = empty string, empty = null
    assert table.schema.field("n").type == pa.int64()
    assert table["n"].to_pylist() == [None, 7, 8]  # empty unquoted = null in a numeric column
    # a quoted "" is a value, not a null, so the column cannot be numeric: it stays text
    assert table["qn"].to_pylist() == ["", "", "5"]


def test_csv_text_columns_exact(tmp_path: Path) -> None:
    src = one(write_bytes(tmp_path / "k.csv", b"id,price,ts\n000123,1.50,2024-01-01T00:00:00\n"))
    assert read_schema(src).field("id").type == pa.int64()  # inferred without text_columns
    table = read_all(src, text_columns=["id", "price", "ts"])
    assert table.to_pylist() == [{"id": "000123", "price": "1.50", "ts": "2024-01-01T00:00:00"}]
    with pytest.raises(SourceError, match="'nope'"):
        read_all(src, text_columns=["nope"])


def test_csv_types_stable_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_dialect, "CSV_BLOCK_BYTES", 1 << 14)
    monkeypatch.setattr(csv_dialect, "CSV_STREAM_BLOCK_BYTES", 1 << 14)
    rows = [f"{i},{i * 2},\n" for i in range(5000)] + ["5000,1,late value\n"]
    src = one(write_bytes(tmp_path / "s.csv", ("a,b,c\n" + "".join(rows)).encode()))
    batches = list(iter_batches(src))
    assert len(batches) > 3 and len({b.schema for b in batches}) == 1
    # column c is empty in the first block: read as a string, so the late value still fits
    assert batches[0].schema.field("c").type == pa.string()
    assert pa.Table.from_batches(batches)["c"].to_pylist()[-1] == "late value"

    bad = [f"{i},{i}\n" for i in range(5000)] + ["x9,1\n"]
    src = one(write_bytes(tmp_path / "bad.csv", ("a,b\n" + "".join(bad)).encode()))
    with pytest.raises(SourceError) as info:
        read_all(src)
    message = str(info.value)
    assert str(src.path) in message and "'a'" in message and "'x9'" in message
    assert "int64" in message and "text" in message


def test_bounded_batches_and_column_selection(tmp_path: Path) -> None:
    body = "".join(f"{i:07d},{i % 97},c{i}\n" for i in range(200_000))
    src = one(write_bytes(tmp_path / "big.csv.gz", ("id,qty,name\n" + body).encode(), "gzip"))
    batches = list(
        iter_batches(src, columns=["name", "id"], text_columns=["id"], batch_rows=30_000)
    )
    assert len(batches) >= 7 and all(0 < b.num_rows <= 30_000 for b in batches)
    assert {b.schema for b in batches} == {pa.schema([("name", pa.string()), ("id", pa.string())])}
    assert sum(b.num_rows for b in batches) == 200_000
    assert batches[0]["id"][0].as_py() == "0000000"
    assert batches[-1]["name"][-1].as_py() == "c199999"
    with pytest.raises(SourceError, match="'nope'"):
        iter_batches(src, columns=["id", "nope"])


def test_parquet_and_ndjson_batches_bounded(tmp_path: Path) -> None:
    table = pa.table({"id": [str(i) for i in range(10_000)], "v": list(range(10_000))})
    pq_src = one(write_parquet(tmp_path / "t.parquet", table, row_group_size=4096))
    lines = "".join(json.dumps(r) + "\n" for r in table.to_pylist())
    js_src = one(write_bytes(tmp_path / "t.jsonl", lines.encode()))
    for src in (pq_src, js_src):
        batches = list(iter_batches(src, columns=["v", "id"], batch_rows=3000))
        assert all(b.num_rows <= 3000 for b in batches) and len(batches) >= 4
        got = pa.Table.from_batches(batches)
        assert got.column_names == ["v", "id"] and got["v"].to_pylist() == list(range(10_000))


# ---------------------------------------------------------------------------------------------
# NDJSON semantics


def test_ndjson_numeric_keys_as_written(tmp_path: Path) -> None:
    text = (
        b'{"id": 123, "k": "000123", "amount": 1.5, "ts": "2024-01-01T00:00:00", "m": {"x": 1}}\n'
        b"\n   \n"
        b'{"id": 1.50, "k": 7, "amount": 2, "ts": "2024-01-02T00:00:00", "m": {"x": 2}}\n'
        b'{"id": 12345678901234567890, "k": true, "amount": null, "ts": null, "m": null}\n'
        b'{"id": "abc", "k": -0, "amount": 1e3, "ts": "2024-01-03T00:00:00", "m": {"x": 3}}\n'
    )
    src = one(write_bytes(tmp_path / "k.ndjson", text))
    table = read_all(src, text_columns=["id", "k"])
    assert table["id"].to_pylist() == ["123", "1.50", "12345678901234567890", "abc"]
    assert table["k"].to_pylist() == ["000123", "7", "true", "-0"]
    assert table.schema == read_schema(src, text_columns=["id", "k"])
    # the other columns are typed exactly as the fast path types them
    fast = read_all(src, columns=["amount", "ts", "m"])
    assert table.select(["amount", "ts", "m"]).equals(fast)
    assert fast.schema.field("ts").type == pa.timestamp("s")


def test_ndjson_falls_back_mid_file_without_losing_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    rows = [{"id": f"{i:06d}", "n": i} for i in range(3000)]
    rows[2500]["id"] = 2500  # a bare number long after the first block
    src = one(
        write_bytes(tmp_path / "late.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    )
    batches = list(iter_batches(src, text_columns=["id"], batch_rows=1000))
    table = pa.Table.from_batches(batches)
    assert table["n"].to_pylist() == list(range(3000))
    assert table["id"][2500].as_py() == "2500" and table["id"][2499].as_py() == "002499"
    assert len({b.schema for b in batches}) == 1


def test_ndjson_malformed_line_reports_line_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = one(write_bytes(tmp_path / "bad.jsonl", b'{"a": 1}\n\n{"a": 2,}\n'))
    with pytest.raises(SourceError, match=r"line 3, column \d+") as info:
        read_all(src)
    assert str(src.path) in str(info.value)
    # also when the error is far past the first block (fast path already returned rows)
    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    lines = [json.dumps({"a": i}) for i in range(2000)]
    lines[1500] = '{"a": 1500'
    late = one(write_bytes(tmp_path / "late.jsonl", ("\n".join(lines) + "\n").encode()))
    with pytest.raises(SourceError, match="line 1501"):
        read_all(late)
    wrong = one(write_bytes(tmp_path / "arr.jsonl", b'{"a": 1}\n[1, 2]\n'))
    with pytest.raises(SourceError, match="line 2 is a JSON list"):
        read_all(wrong)


def test_ndjson_type_change_after_first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    for late, shown in [('{"a": "oops"}', "oops"), ('{"a": 1.25}', "1.25")]:
        lines = [json.dumps({"a": i, "b": "x"}) for i in range(1000)] + [late]
        src = one(write_bytes(tmp_path / "t.jsonl", ("\n".join(lines) + "\n").encode()))
        with pytest.raises(SourceError) as info:
            read_all(src)
        message = str(info.value)
        assert f"line 1001: field 'a' has the value {shown} that is not a valid int64" in message
        assert "4 KB" in message and "text" in message


def test_ndjson_clean_file_stays_on_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_slow_path(*args: Any) -> None:
        raise AssertionError("slow path used")

    monkeypatch.setattr(ndjson, "_slow_batches", no_slow_path)
    monkeypatch.setattr(ndjson_values, "NDJSON_BLOCK_BYTES", 1 << 12)
    lines = "".join(json.dumps({"id": f"{i:05d}", "v": i}) + "\n" for i in range(2000))
    src = one(write_bytes(tmp_path / "ok.jsonl.gz", lines.encode(), "gzip"))
    table = read_all(src, text_columns=["id"], batch_rows=500)
    assert table.num_rows == 2000 and table["id"][0].as_py() == "00000"


def test_ndjson_fields_and_empty_file(tmp_path: Path) -> None:
    src = one(write_bytes(tmp_path / "f.jsonl", b'{"a": 1}\n{"a": 2, "late": "x"}\n'))
    with pytest.raises(SourceError, match="'nope'"):
        iter_batches(src, columns=["a", "nope"])
    # a text column not seen yet is still read, as text
    table = read_all(src, columns=["a", "key"], text_columns=["key"])
    assert table["key"].to_pylist() == [None, None]
    empty = one(write_bytes(tmp_path / "e.jsonl", b"\n"))
    assert list(iter_batches(empty)) == []


# ---------------------------------------------------------------------------------------------
# corrupt files


def test_corrupt_files_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(1000))}), buf)
    truncated = write_bytes(tmp_path / "t.parquet", buf.getvalue()[:-50])
    with pytest.raises(SourceError, match="Parquet") as info:
        read_schema(one(truncated))
    assert str(truncated) in str(info.value)

    full = gzip.compress(b"a,b\n" + b"1,2\n" * 50_000)
    cut = write_bytes(tmp_path / "cut.csv.gz", full[: len(full) // 2])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        read_all(one(cut))

    ragged = write_bytes(tmp_path / "ragged.csv", b"a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(SourceError, match=r"malformed CSV.*Expected 3 columns"):
        read_all(one(ragged))

    empty = write_bytes(tmp_path / "empty.csv", b"")
    with pytest.raises(SourceError, match="header row"):
        read_schema(one(empty))

    latin = write_bytes(tmp_path / "latin.csv", "name\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(SourceError, match="UTF-8"):
        read_all(one(latin))
    late_latin = b"name\n" + b"cafe\n" * 5000 + "caf\u00e9\n".encode("latin-1")
    monkeypatch.setattr(csv_dialect, "CSV_BLOCK_BYTES", 1 << 12)
    with pytest.raises(SourceError, match="not valid UTF-8"):
        read_all(one(write_bytes(tmp_path / "late_latin.csv", late_latin)))

    dupes = write_bytes(tmp_path / "dupes.csv", b"a,a\n1,2\n")
    with pytest.raises(SourceError, match="repeats"):
        read_schema(one(dupes))
