"""Warehouse export layouts, read as the warehouses write them (local files; S3 is the same code
path through connectors.s3_store): Snowflake, BigQuery, Redshift (incl. MANIFEST), Spark, Hive
partitions, format detection, the mapping's `source:` section and schema drift.

Every run goes through the whole pipeline (`run_plain`, dry-run or validate); delivered
transaction_ids are compared with IDs computed from the contract text with uuid alone.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from connectors.discovery import discover_sources
from connectors.readers import iter_batches, read_schema
from connectors.schema_drift import FileColumns, merge_types, unify_types
from moesif_backfill.errors import ConfigError, MappingError, SourceError
from pipeline.report import RunSummary
from pipeline.settings import RunSettings
from tests.datasets import MAPPING, NAMESPACE, expected_ids, line_id, payments_table, write_mapping
from tests.test_pipeline import run_plain
from transforms.mapping import parse_mapping
from transforms.source_options import SourceOptions

COLUMNS = ["invoice_line_id", "customer_id", "user_id", "created_at", "amount", "currency"]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=123_000)


# ---------------------------------------------------------------------------------------------
# helpers


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return payments_table(start, n, now=NOW).to_pylist()  # type: ignore[no-any-return]


def text_file(
    path: Path,
    data: list[dict[str, Any]],
    *,
    delimiter: str = ",",
    header: bool = True,
    null: str = "",
    time: Callable[[dt.datetime], str] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
    compress: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """Delimited text as warehouses unload it: no quoting, the warehouse's null marker."""

    def cell(v: Any) -> str:
        if v is None:
            return null
        if isinstance(v, dt.datetime):
            return time(v)
        return str(v)

    lines = [delimiter.join(data[0].keys())] if header else []
    lines += [delimiter.join(cell(v) for v in row.values()) for row in data]
    body = ("\n".join(lines) + "\n").encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body) if compress else body)
    return path


def parquet_file(path: Path, table: pa.Table, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)
    return path


def mapping_file(tmp_path: Path, **changes: Any) -> Path:
    mapping = dict(MAPPING)
    for key, value in changes.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value
    return write_mapping(tmp_path / "mapping.yaml", mapping)


def run(
    tmp_path: Path, sources: Sequence[Path | str], mapping: Path | None = None, **kw: Any
) -> tuple[RunSummary, BaseException | None, list[dict[str, Any]]]:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)  # a run writes one file per input
    settings = RunSettings.model_validate(
        {
            "sources": [str(s) for s in sources],
            "mapping": mapping or mapping_file(tmp_path),
            "mode": "dry-run",
            "out": out,
            "checkpoint": str(tmp_path / "ckpt"),
            "job": "layouts",
            "chunk_rows": 1_000,
            **kw,
        }
    )
    summary, err = run_plain(settings)
    records = [
        json.loads(line)
        for f in sorted(out.glob("*.ndjson.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    return summary, err, records


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["transaction_id"] for r in records]


def contract_id(text: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"v1|{len(text.encode())}:{text}"))


def iso_ms(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------------------
# Snowflake: COPY INTO @stage


def test_snowflake_headerless_gzip_csv(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    snowflake_time = lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " +0000"  # noqa: E731
    for i, (start, n) in enumerate([(1, 40), (41, 35)]):
        text_file(
            stage / f"data_0_{i}_0.csv.gz",
            rows(start, n),
            header=False,
            null="\\N",
            time=snowflake_time,
            compress=True,
        )
    source = {"header": False, "columns": COLUMNS, "null_values": ["\\N"]}
    summary, err, records = run(tmp_path, [stage], mapping_file(tmp_path, source=source))
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 75) and summary.actions_sent == 75
    first = next(r for r in records if r["transaction_id"] == contract_id(line_id(10)))
    assert "user_id" not in first  # \N is null: the field is left out, not the text "\N"
    assert first["request"]["time"] == iso_ms(NOW - dt.timedelta(minutes=10))


def test_headerless_csv_without_source_section_says_how(tmp_path: Path) -> None:
    path = text_file(tmp_path / "stage" / "data_0_0_0.csv", rows(1, 5), header=False)
    _summary, err, _ = run(tmp_path, [path])
    assert isinstance(err, MappingError)
    message = str(err)
    assert str(path) in message and "source: {header: false, columns: [...]}" in message


def test_snowflake_parquet(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    parquet_file(stage / "data_0_0_0.snappy.parquet", payments_table(1, 30), compression="snappy")
    parquet_file(stage / "data_0_1_0.snappy.parquet", payments_table(31, 20), compression="snappy")
    _summary, err, records = run(tmp_path, [stage])
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 50)


# ---------------------------------------------------------------------------------------------
# BigQuery: EXPORT DATA


def test_bigquery_parquet_csv_and_ndjson(tmp_path: Path) -> None:
    export = tmp_path / "export"
    parquet_file(export / "parquet" / "file-000000000000.parquet", payments_table(1, 20))
    parquet_file(export / "parquet" / "file-000000000001.parquet", payments_table(21, 20))
    bq_time = lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"  # noqa: E731
    text_file(export / "csv" / "file-000000000000.csv", rows(41, 20), time=bq_time)
    lines = [json.dumps({**r, "created_at": bq_time(r["created_at"])}) + "\n" for r in rows(61, 20)]
    (export / "json").mkdir()
    (export / "json" / "file-000000000000.json").write_text("".join(lines))
    _summary, err, records = run(tmp_path, [export])
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 80)
    by_id = {r["transaction_id"]: r for r in records}
    for i in (45, 70):  # CSV and NDJSON: "2024-03-01 04:45:42.914 UTC" read as that instant
        assert by_id[contract_id(line_id(i))]["request"]["time"] == iso_ms(
            NOW - dt.timedelta(minutes=i)
        )


# ---------------------------------------------------------------------------------------------
# Redshift: UNLOAD


def test_redshift_pipe_delimited_parts_without_extension(tmp_path: Path) -> None:
    unload = tmp_path / "unload"
    text_file(unload / "0000_part_00", rows(1, 30), delimiter="|", header=False)
    text_file(unload / "0001_part_00", rows(31, 30), delimiter="|", header=False)
    text_file(unload / "0002_part_00.gz", rows(61, 30), delimiter="|", header=False, compress=True)
    # detection by content: pipe-delimited text, gzip magic then pipe-delimited text
    found = discover_sources([str(unload)])
    assert [(s.format, s.compression, s.layout.delimiter) for s in found] == [
        ("csv", None, "|"),
        ("csv", None, "|"),
        ("csv", "gzip", "|"),
    ]
    explicit = {"format": "csv", "delimiter": "|", "header": False, "columns": COLUMNS}
    for source in (explicit, {"columns": COLUMNS}):  # spelled out, or detected
        _summary, err, records = run(tmp_path, [unload], mapping_file(tmp_path, source=source))
        assert err is None, err
        assert sorted(ids(records)) == sorted(expected_ids(1, 90))


def test_redshift_parquet_parts(tmp_path: Path) -> None:
    unload = tmp_path / "unload"
    parquet_file(unload / "0000_part_00.parquet", payments_table(1, 25))
    parquet_file(unload / "0001_part_00.parquet", payments_table(26, 25))
    parquet_file(unload / "0002_part_00", payments_table(51, 5))  # no extension: PAR1 magic
    _summary, err, records = run(tmp_path, [unload])
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 55)


def _manifest(path: Path, entries: list[tuple[str, Path, int]]) -> Path:
    doc = {
        "entries": [
            {"url": url, "meta": {"content_length": f.stat().st_size, "record_count": count}}
            for url, f, count in entries
        ],
        "schema": {"elements": [{"name": c} for c in COLUMNS]},
        "meta": {"record_count": sum(c for _, _, c in entries)},
    }
    path.write_text(json.dumps(doc, indent=2))  # Redshift writes it over several lines
    return path


def test_redshift_manifest_reads_exactly_its_entries(tmp_path: Path) -> None:
    unload = tmp_path / "unload"
    a = text_file(unload / "venue_0000_part_00", rows(1, 20), delimiter="|", header=False)
    b = parquet_file(unload / "sub" / "venue_0001_part_00.parquet", payments_table(21, 15))
    text_file(unload / "stale_0000_part_00", rows(500, 5), delimiter="|", header=False)
    manifest = _manifest(
        unload / "venue_manifest",
        [("venue_0000_part_00", a, 20), (str(b), b, 15)],  # relative and absolute paths
    )
    source = {"header": False, "columns": COLUMNS}
    summary, err, records = run(tmp_path, [manifest], mapping_file(tmp_path, source=source))
    assert err is None, err
    assert sorted(ids(records)) == sorted(expected_ids(1, 35))  # not the stale part

    # manifest: true reads any file as a manifest, whatever its name
    listing = manifest.rename(unload / "files.txt")
    source_true = {**source, "manifest": True}
    summary, err, records = run(tmp_path, [listing], mapping_file(tmp_path, source=source_true))
    assert err is None, err
    assert summary.actions_sent == 35


def test_redshift_manifest_wrong_record_count_stops_before_sending(tmp_path: Path) -> None:
    unload = tmp_path / "unload"
    a = parquet_file(unload / "0000_part_00.parquet", payments_table(1, 20))
    b = text_file(unload / "0001_part_00", rows(21, 20), delimiter="|", header=False)
    manifest = _manifest(unload / "manifest", [(str(a), a, 20), ("0001_part_00", b, 21)])
    source = {"header": False, "columns": COLUMNS}
    summary, err, records = run(tmp_path, [manifest], mapping_file(tmp_path, source=source))
    assert isinstance(err, ConfigError)
    message = str(err)
    assert str(manifest) in message and str(b) in message
    assert "should hold 21 record(s)" in message and "holds 20" in message
    assert records == [] and summary.actions_sent == 0

    # a wrong Parquet count (footer) and a changed file (size) are caught the same way
    _manifest(manifest, [(str(a), a, 19), ("0001_part_00", b, 20)])
    _, err, records = run(tmp_path, [manifest], mapping_file(tmp_path, source=source))
    assert isinstance(err, ConfigError) and "should hold 19" in str(err) and str(a) in str(err)
    _manifest(manifest, [(str(a), a, 20), ("0001_part_00", b, 20)])
    text_file(b, rows(21, 21), delimiter="|", header=False)
    _, err, records = run(tmp_path, [manifest], mapping_file(tmp_path, source=source))
    assert isinstance(err, ConfigError) and "the manifest says" in str(err)
    assert records == []


def test_manifest_in_a_directory_and_s3_urls_read_from_a_downloaded_copy(tmp_path: Path) -> None:
    """`aws s3 sync s3://bucket/unload/ ./unload/`: the manifest in the directory lists S3 URLs;
    each part is read once, from the local copy, and its count is checked."""
    unload = tmp_path / "unload"
    parts = [
        text_file(
            unload / "dt=2024-03-01" / "0000_part_00", rows(1, 10), delimiter="|", header=False
        ),
        text_file(
            unload / "dt=2024-03-02" / "0000_part_00", rows(11, 10), delimiter="|", header=False
        ),
    ]
    entries = [(f"s3://bucket/unload/{p.parent.name}/{p.name}", p, 10) for p in parts]
    _manifest(unload / "manifest", entries)
    source = {"header": False, "columns": COLUMNS}
    mapping = mapping_file(tmp_path, source=source, metadata={"dt": "dt"})
    _summary, err, records = run(tmp_path, [unload], mapping)
    assert err is None, err
    assert sorted(ids(records)) == sorted(expected_ids(1, 20))  # once each
    days = {r["transaction_id"]: r["metadata"]["dt"] for r in records}
    assert days[contract_id(line_id(3))] == "2024-03-01"
    assert days[contract_id(line_id(13))] == "2024-03-02"
    _manifest(unload / "manifest", [*entries[:1], (entries[1][0], parts[1], 11)])
    _, err, _ = run(tmp_path, [unload], mapping)
    assert isinstance(err, ConfigError) and "should hold 11" in str(err)


# ---------------------------------------------------------------------------------------------
# Spark / Databricks


def test_spark_parts_and_marker_files(tmp_path: Path) -> None:
    out = tmp_path / "spark"
    job = "4f3c2a1b-0000-4000-8000-1234567890ab"
    parquet_file(out / f"part-00000-{job}-c000.snappy.parquet", payments_table(1, 30))
    parquet_file(out / f"part-00001-{job}-c000.snappy.parquet", payments_table(31, 30))
    for marker in ["_SUCCESS", "_committed_123", "_started_123", f".part-00000-{job}.crc"]:
        (out / marker).write_bytes(b"\x00garbage")
    (out / f"part-00000-{job}-c000.snappy.parquet.crc").write_bytes(b"crc")
    found = discover_sources([str(out)])
    assert [os.path.basename(s.path)[:10] for s in found] == ["part-00000", "part-00001"]
    _summary, err, records = run(tmp_path, [out])
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 60)


# ---------------------------------------------------------------------------------------------
# Hive partitions


def test_partition_directories_become_columns(tmp_path: Path) -> None:
    root = tmp_path / "events"
    today = NOW.date().isoformat()
    parquet_file(root / f"dt={today}" / "region=eu" / "part-0.parquet", payments_table(1, 10))
    parquet_file(
        root / f"dt={today}" / "region=us%2Deast" / "part-0.parquet", payments_table(11, 10)
    )
    parquet_file(
        root / f"dt={today}" / "region=__HIVE_DEFAULT_PARTITION__" / "p.parquet",
        payments_table(21, 5),
    )
    mapping = mapping_file(
        tmp_path,
        time={"column": "dt"},
        metadata={"region": "region", "amount": "amount"},
    )
    _, err, records = run(tmp_path, [root], mapping)
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 25)
    by_id = {r["transaction_id"]: r for r in records}
    assert by_id[contract_id(line_id(1))]["metadata"]["region"] == "eu"
    assert by_id[contract_id(line_id(11))]["metadata"]["region"] == "us-east"  # unescaped
    assert "region" not in by_id[contract_id(line_id(21))]["metadata"]  # Hive's null
    assert by_id[contract_id(line_id(1))]["request"]["time"] == f"{today}T00:00:00.000Z"

    # a glob's root is the part before the first wildcard
    _, err, records = run(tmp_path, [str(root / "*" / "region=eu" / "*.parquet")], mapping)
    assert err is None and {r["metadata"]["region"] for r in records} == {"eu"}
    # a file given on its own has no partition directories above its root: region is missing
    one = root / f"dt={today}" / "region=eu" / "part-0.parquet"
    _summary, err, _ = run(tmp_path, [one], mapping)
    assert isinstance(err, MappingError) and "'region'" in str(err)


def test_partition_never_overrides_a_column(tmp_path: Path) -> None:
    root = tmp_path / "events"
    table = payments_table(1, 5).append_column("region", pa.array(["file"] * 5))
    parquet_file(root / "region=eu" / "part-0.parquet", table)
    summary, err, _ = run(tmp_path, [root], mapping_file(tmp_path, metadata={"r": "region"}))
    assert isinstance(err, MappingError)
    assert "'region' is both a column of the file and a partition directory" in str(err)
    # not used by the mapping: no conflict, and the file's own column is what exists
    summary, err, _records = run(tmp_path, [root])
    assert err is None and summary.actions_sent == 5


# ---------------------------------------------------------------------------------------------
# the source: section, encodings, nulls, detection


def test_latin1_and_null_values(tmp_path: Path) -> None:
    data = rows(1, 6)
    data[0]["currency"] = "caf\u00e9"
    data[1]["user_id"] = "NULL"
    data[2]["customer_id"] = "n/a"
    path = text_file(tmp_path / "in" / "export.csv", data, encoding="latin-1")
    source = {"encoding": "latin-1", "null_values": ["NULL", "n/a"]}
    _, err, records = run(tmp_path, [path], mapping_file(tmp_path, source=source))
    assert err is None, err
    by_id = {r["transaction_id"]: r for r in records}
    assert by_id[contract_id(line_id(1))]["metadata"]["currency"] == "caf\u00e9"
    assert "user_id" not in by_id[contract_id(line_id(2))]
    assert "company_id" not in by_id[contract_id(line_id(3))]
    # without the encoding: a clear error that says how
    _summary, err, _ = run(tmp_path, [path], mapping_file(tmp_path, source={"null_values": ["x"]}))
    assert isinstance(err, ConfigError) and "encoding" in str(err)


def test_source_options_validation_and_fingerprint() -> None:
    base = parse_mapping(MAPPING)
    assert base.source == SourceOptions()
    same = parse_mapping({**MAPPING, "source": {"header": True, "encoding": "UTF8"}})
    assert same.fingerprint() == base.fingerprint()
    piped = parse_mapping({**MAPPING, "source": {"delimiter": "|", "columns": COLUMNS}})
    assert piped.fingerprint() != base.fingerprint() and not piped.source.has_header
    bad = [
        ({"header": False}, "needs `columns`"),
        ({"header": True, "columns": ["a"]}, "without a header row"),
        ({"delimiter": "||"}, "exactly one character"),
        ({"format": "xml"}, "source.format"),
        ({"format": "parquet", "delimiter": "|"}, "only to format: csv"),
        ({"compression": "bzip2"}, "source.compression"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"columns": ["a", "a"]}, "unique"),
        ({"delimter": "|"}, "unknown field"),
    ]
    for source, expected in bad:
        with pytest.raises(MappingError, match=expected):
            parse_mapping({**MAPPING, "source": source})


def test_format_detection_and_overrides(tmp_path: Path) -> None:
    comma = text_file(tmp_path / "a" / "0000_part_00", rows(1, 3), header=False)
    with pytest.raises(SourceError) as info:
        discover_sources([str(comma)])
    assert str(comma) in str(info.value) and "source: {format: csv" in str(info.value)
    [src] = discover_sources([str(comma)], SourceOptions(format="csv", columns=tuple(COLUMNS)))
    assert (src.format, src.layout.delimiter) == ("csv", None)
    [src] = discover_sources([str(comma)], SourceOptions(delimiter=",", columns=tuple(COLUMNS)))
    assert src.format == "csv"
    opts = SourceOptions(columns=tuple(COLUMNS))
    table = pa.Table.from_batches(list(iter_batches(src, options=opts, text_columns=COLUMNS[:1])))
    assert table.column_names == COLUMNS and table["invoice_line_id"][0].as_py() == line_id(1)

    parquet = parquet_file(tmp_path / "b" / "x.parquet", payments_table(1, 2))
    with pytest.raises(SourceError, match=r"is Parquet, but the mapping.s source\.format is csv"):
        discover_sources([str(parquet)], SourceOptions(format="csv"))
    gz = text_file(tmp_path / "c" / "x.csv", rows(1, 2), compress=True)
    with pytest.raises(SourceError, match=r"source\.compression is none"):
        discover_sources([str(gz)], SourceOptions(compression="none"))
    assert discover_sources([str(gz)], SourceOptions(compression="gzip"))[0].compression == "gzip"

    empty = tmp_path / "d" / "0003_part_00"
    empty.parent.mkdir()
    empty.write_bytes(b"")  # an empty slice of an unload: 0 rows, not an error
    [src] = discover_sources([str(empty)], SourceOptions(format="csv", columns=tuple(COLUMNS)))
    assert read_schema(src, options=opts).names == COLUMNS
    assert list(iter_batches(src, options=opts)) == []


def test_malformed_pipe_row_names_the_row(tmp_path: Path) -> None:
    path = text_file(tmp_path / "u" / "0000_part_00", rows(1, 4), delimiter="|", header=False)
    lines = path.read_text().splitlines()
    lines[2] += "|extra"
    path.write_text("\n".join(lines) + "\n")
    source = {"header": False, "columns": COLUMNS}
    _summary, err, _ = run(tmp_path, [path], mapping_file(tmp_path, source=source))
    assert isinstance(err, ConfigError | SourceError)
    assert "data row 3" in str(err) and "'|'" in str(err)


# ---------------------------------------------------------------------------------------------
# schema drift


def _drift_table(start: int, n: int, **types: pa.DataType) -> pa.Table:
    table = payments_table(start, n, now=NOW)
    out = {}
    for name in table.column_names:
        column = table[name]
        if name in types:
            t = types[name]
            if pa.types.is_decimal(t):
                column = pa.array([Decimal(str(v)) for v in column.to_pylist()], t)
            else:
                column = column.cast(t)
        out[name] = column
    return pa.table(out)


def test_compatible_drift_is_unified(tmp_path: Path) -> None:
    data = tmp_path / "drift"
    a = _drift_table(1, 20, amount=pa.decimal128(10, 2), created_at=pa.timestamp("ms", "UTC"))
    a = a.append_column("qty", pa.array(range(20), pa.int32()))
    a = a.append_column("ratio", pa.array([0.5] * 20, pa.float32()))
    b = _drift_table(21, 20, amount=pa.decimal128(12, 4))
    b = b.append_column("qty", pa.array(range(20), pa.int64()))
    b = b.append_column("ratio", pa.array([0.25] * 20, pa.float64()))
    b = b.append_column("discount", pa.array([1.5] * 20))
    parquet_file(data / "a.parquet", a)
    parquet_file(data / "b.parquet", b)
    # a CSV part whose discount column is empty in every row (inferred as string)
    text_file(data / "c.csv", [{**r, "qty": 7, "ratio": 2, "discount": None} for r in rows(41, 5)])
    discount = {"column": "discount", "if_missing": "omit"}  # a.parquet has none
    metadata = {"amount": "amount", "qty": "qty", "ratio": "ratio", "discount": discount}
    summary, err, records = run(tmp_path, [data], mapping_file(tmp_path, metadata=metadata))
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 45)
    assert summary.sent_without_field == {"metadata.discount": 20}
    by_id = {r["transaction_id"]: r["metadata"] for r in records}
    first, later = by_id[contract_id(line_id(2))], by_id[contract_id(line_id(22))]
    # one decimal type, (12, 4), in both files: the same digits in the JSON
    raw = b"".join(gzip.decompress(f.read_bytes()) for f in (tmp_path / "out").glob("*.gz"))
    assert b'"amount":0.0200,' in raw and b'"amount":0.2200,' in raw
    assert b'"amount":0.02,' not in raw
    assert first["qty"] == 1 and later["qty"] == 1
    assert first["ratio"] == 0.5 and "discount" not in first  # missing in a.parquet: omitted
    assert later["discount"] == 1.5


def test_key_drift_keeps_the_ids_of_the_contract(tmp_path: Path) -> None:
    """int32, int64 and decimal keys of the same value give the same canon text, so the same
    transaction_id, in every file."""
    data = tmp_path / "keys"
    now = pa.array([NOW] * 10, pa.timestamp("us", "UTC"))
    keys = list(range(1, 11))
    key_types: list[pa.DataType] = [pa.int32(), pa.int64(), pa.decimal128(12, 2), pa.int16()]
    for i, t in enumerate(key_types):
        values = [Decimal(k) for k in keys] if pa.types.is_decimal(t) else keys
        table = pa.table({"line": pa.array(values, t), "created_at": now})
        parquet_file(data / f"part-{i}.parquet", table)
    text_file(data / "part-9.csv", [{"line": k, "created_at": NOW} for k in keys])
    mapping = mapping_file(
        tmp_path,
        transaction_id={"scope": "billing.payments", "key": ["line"]},
        company_id=None,
        user_id=None,
        metadata={"line": "line"},
    )
    _summary, err, records = run(tmp_path, [data], mapping)
    assert err is None, err
    expected = sorted(contract_id(str(k)) for k in keys)
    per_file = [sorted(ids(records[i * 10 : (i + 1) * 10])) for i in range(5)]
    assert all(got == expected for got in per_file), per_file


def test_incompatible_drift_names_file_column_and_types(tmp_path: Path) -> None:
    data = tmp_path / "bad"
    parquet_file(
        data / "a.parquet", payments_table(1, 5).append_column("note", pa.array(["x"] * 5))
    )
    b = payments_table(6, 5).append_column("note", pa.array([1] * 5, pa.int64()))
    parquet_file(data / "b.parquet", b)
    mapping = mapping_file(tmp_path, metadata={"note": "note"})
    summary, err, records = run(tmp_path, [data], mapping)
    assert isinstance(err, MappingError), err
    message = str(err)
    assert str(data / "b.parquet") in message and "'note'" in message
    assert "int64" in message and "string" in message and str(data / "a.parquet") in message
    assert records == [] and summary.actions_sent == 0

    # a CSV column with values that are text is not taken for an empty one
    (data / "b.parquet").unlink()
    parquet_file(data / "b.parquet", payments_table(6, 5).append_column("note", pa.array([1] * 5)))
    text_file(data / "c.csv", [{**r, "note": "text"} for r in rows(11, 3)])
    (data / "a.parquet").unlink()
    summary, err, _ = run(tmp_path, [data], mapping)
    assert isinstance(err, MappingError) and str(data / "c.csv") in str(err)

    # a key whose kind changes can never give matching IDs
    keyed = tmp_path / "keyed"
    t = pa.array([NOW] * 3, pa.timestamp("us", "UTC"))
    parquet_file(keyed / "a.parquet", pa.table({"k": [1, 2, 3], "created_at": t}))
    parquet_file(keyed / "b.parquet", pa.table({"k": t, "created_at": t}))
    mapping = mapping_file(
        tmp_path,
        transaction_id={"scope": "s", "key": ["k"]},
        company_id=None,
        user_id=None,
        metadata=None,
    )
    summary, err, _ = run(tmp_path, [keyed], mapping)
    assert isinstance(err, MappingError) and "key column 'k'" in str(err)


def test_missing_required_column_in_one_file_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "d"
    parquet_file(data / "a.parquet", payments_table(1, 5))
    parquet_file(data / "b.parquet", payments_table(6, 5).drop_columns(["invoice_line_id"]))
    _summary, err, _ = run(tmp_path, [data])
    assert isinstance(err, MappingError)
    assert str(data / "b.parquet") in str(err) and "invoice_line_id" in str(err)


def test_type_merge_rules() -> None:
    cases = [
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.uint32(), pa.int8(), pa.int64()),
        (pa.uint64(), pa.int64(), None),
        (pa.int64(), pa.float32(), pa.float64()),
        (pa.float32(), pa.float64(), pa.float64()),
        (pa.decimal128(10, 2), pa.decimal128(12, 4), pa.decimal128(12, 4)),
        (pa.decimal128(38, 0), pa.decimal128(10, 6), pa.decimal256(44, 6)),
        (pa.int64(), pa.decimal128(5, 2), pa.decimal128(21, 2)),
        (pa.decimal128(5, 2), pa.float64(), None),
        (pa.timestamp("ms"), pa.timestamp("ns"), pa.timestamp("ns")),
        (pa.timestamp("s", "UTC"), pa.timestamp("us", "Europe/Berlin"), pa.timestamp("us", "UTC")),
        (pa.timestamp("s"), pa.timestamp("s", "UTC"), None),
        (pa.date32(), pa.date64(), pa.date32()),
        (pa.large_string(), pa.dictionary(pa.int32(), pa.string()), pa.string()),
        (pa.null(), pa.int16(), pa.int16()),
        (pa.string(), pa.int64(), None),
        (pa.bool_(), pa.int8(), None),
    ]
    for a, b, want in cases:
        got = merge_types(a, b)
        assert (got is None and want is None) or (got is not None and got.equals(want)), (a, b)
        back = merge_types(b, a)
        assert (back is None) == (want is None), (b, a)


def test_redshift_header_line_counts_in_the_manifest(tmp_path: Path) -> None:
    """UNLOAD ... FORMAT CSV HEADER MANIFEST VERBOSE: record_count includes the header line."""
    unload = tmp_path / "unload"
    part = text_file(unload / "0000_part_00", rows(1, 12))  # comma-separated, header, no extension
    manifest = _manifest(unload / "manifest", [(str(part), part, 13)])
    mapping = mapping_file(tmp_path, source={"format": "csv"})
    _, err, records = run(tmp_path, [manifest], mapping)
    assert err is None, err
    assert set(ids(records)) == expected_ids(1, 12)
    _manifest(manifest, [(str(part), part, 12)])
    _, err, records = run(tmp_path, [manifest], mapping)
    assert isinstance(err, ConfigError) and "(+1 header line)" in str(err)


def test_docs_mapping_examples_are_valid() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "warehouse-exports.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        spec = parse_mapping(yaml.safe_load(block), origin="docs/warehouse-exports.md")
        assert spec.transaction_id.key == ["invoice_line_id"]


def test_late_text_in_a_column_typed_by_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV column empty in its first block that holds text later, next to a Parquet int64.
    As company_id it is text in every file (issue 10: identity fields are text, always). As
    metadata, the pass over the whole CSV at preflight finds the text: a mapping error naming
    the file, the column and both types before anything is sent (it used to stop the file at
    that row, after the rows before it)."""
    from connectors import csv_dialect

    monkeypatch.setattr(csv_dialect, "CSV_BLOCK_BYTES", 1 << 12)
    data = tmp_path / "late"
    parquet_file(data / "a.parquet", payments_table(1, 5).append_column("seq", pa.array([1] * 5)))
    late = [{**r, "seq": None} for r in rows(6, 300)]
    late[-2]["seq"] = 12
    late[-1]["seq"] = "oops"
    text_file(data / "b.csv", late)
    summary, err, records = run(tmp_path, [data], mapping_file(tmp_path, company_id="seq"))
    assert err is None, err
    companies = [r.get("company_id") for r in records]
    assert companies[:5] == ["1"] * 5 and companies[-2:] == ["12", "oops"]
    assert companies[5:-2] == [None] * 298 and summary.actions_sent == 305

    summary, err, records = run(tmp_path, [data], mapping_file(tmp_path, metadata={"seq": "seq"}))
    assert isinstance(err, MappingError) and err.exit_code == 2
    message = str(err)
    assert str(data / "b.csv") in message and "'seq'" in message and "int64" in message
    assert records == [] and summary.actions_sent == 0


def test_unify_inferred_strings_with_number_text() -> None:
    """A header-only CSV (every column typed string) next to a CSV whose metadata numbers are
    read as text: no conflict."""
    files = [
        FileColumns("a.csv", {"amount": pa.string()}, inferred=frozenset({"amount"})),
        FileColumns("b.csv", {"amount": pa.float64()}, number_text=frozenset({"amount"})),
    ]
    got = unify_types(files, keys=(), time_column="t", holds_only_nulls=lambda i, c: True)
    assert (got.types, got.as_text) == ({}, {})
    # text in a.csv: each file keeps the typing its own values give it (issue 10: numbers
    # are typed per column per file), so b.csv's numbers stay numbers
    got = unify_types(files, keys=(), time_column="t", holds_only_nulls=lambda i, c: False)
    assert (got.types, got.as_text) == ({}, {})
    with_parquet = [*files, FileColumns("c.parquet", {"amount": pa.decimal128(9, 2)})]
    got = unify_types(with_parquet, keys=(), time_column="t", holds_only_nulls=lambda i, c: True)
    assert got.types == {"amount": pa.decimal128(9, 2)}
    with pytest.raises(MappingError, match=r"a\.csv: column 'amount' is string here but decimal"):
        unify_types(with_parquet, keys=(), time_column="t", holds_only_nulls=lambda i, c: False)
    # next to a declared string, number text stays numbers (typed by its own file) ...
    declared = [*files, FileColumns("d.parquet", {"amount": pa.string()})]
    got = unify_types(declared, keys=(), time_column="t", holds_only_nulls=lambda i, c: False)
    assert (got.types, got.as_text) == ({"amount": pa.string()}, {})
    # ... and next to a declared timestamp it is an error
    stamped = [*files, FileColumns("e.parquet", {"amount": pa.timestamp("us", "UTC")})]
    with pytest.raises(MappingError, match=r"b\.csv: column 'amount' is numbers here but"):
        unify_types(stamped, keys=(), time_column="t", holds_only_nulls=lambda i, c: True)


def test_inferred_numbers_next_to_declared_text_are_read_as_written(tmp_path: Path) -> None:
    data = tmp_path / "mixed"
    table = payments_table(1, 5).set_column(1, "customer_id", pa.array(["00042"] * 5))
    parquet_file(data / "a.parquet", table)
    text_file(data / "b.csv", [{**r, "customer_id": "00042"} for r in rows(6, 5)])  # int64?
    _, err, records = run(tmp_path, [data])
    assert err is None, err
    assert {r["company_id"] for r in records} == {"00042"}  # not "42" from the CSV file
    assert set(ids(records)) == expected_ids(1, 10)


def test_a_mapped_column_missing_from_some_files_stops_preflight(tmp_path: Path) -> None:
    """Issue 10 item 6: an older export without `customer_id` (company_id) stops the run
    before anything is sent, naming the files that lack it; `if_missing: omit` accepts it,
    and the summary counts the rows sent without the field."""
    data = tmp_path / "exports"
    text_file(data / "2026-10.csv", rows(1, 30))

    def without_customer(start: int, n: int) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "customer_id"} for r in rows(start, n)]

    text_file(data / "2026-09.csv", without_customer(31, 20))
    text_file(data / "2026-08.csv", without_customer(51, 5))

    summary, err, records = run(tmp_path, [data])
    assert isinstance(err, MappingError) and err.exit_code == 2
    message = str(err)
    assert "'customer_id' (company_id) is missing from 2 of 3 input file(s)" in message
    assert "2026-09.csv" in message and "2026-08.csv" in message and "2026-10.csv" not in message
    assert "{column: customer_id, if_missing: omit}" in message and "Nothing was sent" in message
    assert records == [] and summary.actions_sent == 0

    optional = {"column": "customer_id", "if_missing": "omit"}
    summary, err, records = run(tmp_path, [data], mapping_file(tmp_path, company_id=optional))
    assert err is None, err
    assert summary.actions_sent == 55 and summary.sent_without_field == {"company_id": 25}
    assert sum("company_id" not in r for r in records) == 25
    assert set(ids(records)) == expected_ids(1, 55)
    # the option decides nothing about IDs or payloads: the fingerprint is the one without it
    plain = parse_mapping(dict(MAPPING))
    assert parse_mapping(dict(MAPPING, company_id=optional)).fingerprint() == plain.fingerprint()
    # the time and transaction_id columns stay required in every file
    with pytest.raises(MappingError, match="action_name cannot have if_missing"):
        parse_mapping(dict(MAPPING, action_name={"column": "x", "if_missing": "omit"}))
