"""Warehouse export layouts in S3, end to end through the CLI.

Each layout is generated the way the warehouse writes it, uploaded to moto server S3, and
backfilled by `moesif-backfill run s3://...` into the strict Firehose endpoint. The delivered
transaction_ids must equal the IDs computed from the contract (tests/datasets.py, standard
library only), with every row accounted for in the summary.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.datasets import MAPPING, expected_ids, line_id

pytestmark = pytest.mark.e2e

COLUMNS = ["invoice_line_id", "customer_id", "user_id", "created_at", "amount", "currency"]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


def _row(i: int) -> list[Any]:
    when = NOW - dt.timedelta(minutes=i % 600)
    return [line_id(i), f"cus_{i % 7}", f"user_{i}", when, f"{i % 997}.25", "USD"]


def _rows(start: int, n: int) -> list[list[Any]]:
    return [_row(i) for i in range(start, start + n)]


def _text(rows: list[list[Any]], *, sep: str, time_fmt: str, header: bool) -> bytes:
    lines = [sep.join(COLUMNS)] if header else []
    for r in rows:
        lines.append(sep.join([*r[:3], r[3].strftime(time_fmt), *r[4:]]))
    return ("\n".join(lines) + "\n").encode()


def _parquet(rows: list[list[Any]]) -> bytes:
    cols = list(zip(*rows, strict=True))
    table = pa.table(
        {
            "invoice_line_id": cols[0],
            "customer_id": cols[1],
            "user_id": cols[2],
            "created_at": pa.array(cols[3], pa.timestamp("us", "UTC")),
            "amount": [float(x) for x in cols[4]],
            "currency": cols[5],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def _layouts(bucket: str) -> dict[str, dict[str, Any]]:
    """name -> {"objects": {key: bytes}, "source": mapping source section, "spec": s3 spec, rows}"""
    iso = "%Y-%m-%dT%H:%M:%SZ"
    out: dict[str, dict[str, Any]] = {}
    out["snowflake"] = {  # COPY INTO @stage ... FILE_FORMAT=(TYPE=CSV COMPRESSION=GZIP)
        "objects": {
            "snowflake/data_0_0_0.csv.gz": gzip.compress(
                _text(_rows(1, 1500), sep=",", time_fmt=iso, header=False)
            ),
            "snowflake/data_0_1_0.csv.gz": gzip.compress(
                _text(_rows(1501, 1500), sep=",", time_fmt=iso, header=False)
            ),
        },
        "source": {"header": False, "columns": COLUMNS},
        "spec": f"s3://{bucket}/snowflake/",
        "ids": (1, 3000),
    }
    parts = {  # UNLOAD ... DELIMITER '|' GZIP MANIFEST: parts without extension + MANIFEST
        "redshift/0000_part_00": _text(_rows(1, 1200), sep="|", time_fmt=iso, header=False),
        "redshift/0001_part_00": _text(_rows(1201, 800), sep="|", time_fmt=iso, header=False),
    }
    manifest = {
        "entries": [
            {
                "url": f"s3://{bucket}/{key}",
                "meta": {"content_length": len(body), "record_count": body.count(b"\n")},
            }
            for key, body in parts.items()
        ]
    }
    out["redshift"] = {
        "objects": {
            **parts,
            "redshift/0002_part_00": _text(_rows(9001, 5), sep="|", time_fmt=iso, header=False),
            "redshift/manifest": json.dumps(manifest).encode(),
        },
        "source": {"format": "csv", "delimiter": "|", "header": False, "columns": COLUMNS},
        "spec": f"s3://{bucket}/redshift/manifest",  # only the manifest's entries are read
        "ids": (1, 2000),
    }
    out["spark"] = {  # df.write.partitionBy("dt").parquet(...)
        "objects": {
            f"spark/dt=2026-11-2{d}/part-0000{d}-{uuid.uuid4()}.c000.snappy.parquet": _parquet(
                _rows(1 + d * 1000, 1000)
            )
            for d in range(3)
        }
        | {"spark/_SUCCESS": b"", "spark/dt=2026-11-20/.part-00000.crc": b"crc"},
        "source": {},
        "spec": f"s3://{bucket}/spark/",
        "ids": (1, 3000),
        "metadata": {"export_day": "dt"},
    }

    def bq_line(r: list[Any]) -> bytes:
        when = r[3].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"  # BigQuery's JSON timestamps
        return json.dumps(dict(zip(COLUMNS, [*r[:3], when, *r[4:]], strict=True))).encode()

    out["bigquery"] = {  # EXPORT DATA OPTIONS(format='JSON')
        "objects": {
            "bigquery/file-000000000000.json": b"\n".join(bq_line(r) for r in _rows(1, 2500))
        },
        "source": {},
        "spec": f"s3://{bucket}/bigquery/",
        "ids": (1, 2500),
    }
    out["bigquery_csv"] = {  # EXPORT DATA OPTIONS(format='CSV', header=true)
        "objects": {
            f"bq-csv/file-00000000000{k}.csv": _text(
                _rows(1 + k * 900, 900), sep=",", time_fmt=iso, header=True
            )
            for k in range(2)
        },
        "source": {},
        "spec": f"s3://{bucket}/bq-csv/*.csv",
        "ids": (1, 1800),
    }
    out["redshift_parquet"] = {  # UNLOAD ... FORMAT PARQUET
        "objects": {
            "rs-parquet/0000_part_00.parquet": _parquet(_rows(1, 700)),
            "rs-parquet/0001_part_00.parquet": _parquet(_rows(701, 700)),
        },
        "source": {},
        "spec": f"s3://{bucket}/rs-parquet/",
        "ids": (1, 1400),
    }
    # The same export over time: amount int32 -> int64, timestamp ms -> us, user_id added
    # (the older part has none: the mapping says so with if_missing: omit).
    drifted = [
        _drift_table(1, amount=pa.int32(), unit="ms", with_user=False),
        _drift_table(501, amount=pa.int64(), unit="us", with_user=True),
    ]
    out["drift"] = {
        "objects": {f"drift/part-{i}.parquet": _table_bytes(t) for i, t in enumerate(drifted)},
        "source": {},
        "spec": f"s3://{bucket}/drift/",
        "ids": (1, 1000),
        "fields": {"user_id": {"column": "user_id", "if_missing": "omit"}},
        "sent_without_field": {"user_id": 500},
    }
    return out


def _drift_table(start: int, *, amount: pa.DataType, unit: str, with_user: bool) -> pa.Table:
    n = 500
    cols: dict[str, Any] = {
        "invoice_line_id": [line_id(i) for i in range(start, start + n)],
        "customer_id": ["c"] * n,
        "created_at": pa.array([NOW] * n, pa.timestamp(unit, "UTC")),
        "amount": pa.array(range(n), amount),
        "currency": ["USD"] * n,
    }
    if with_user:
        cols["user_id"] = ["u"] * n
    return pa.table(cols)


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_warehouse_layouts_from_s3_through_the_cli(
    tmp_path: Path, prefect_api: str, moto_firehose: Any, strict_firehose: Any
) -> None:
    s3 = moto_firehose.s3_client()
    bucket = f"exports-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    layouts = _layouts(bucket)
    for layout in layouts.values():
        for key, body in layout["objects"].items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)

    def backfill(name: str) -> tuple[str, subprocess.CompletedProcess[str], str]:
        layout = layouts[name]
        stream = f"layout-{name}-{uuid.uuid4().hex[:6]}"
        strict_firehose.create_stream(stream)
        mapping = dict(MAPPING, metadata=dict(MAPPING["metadata"], **layout.get("metadata", {})))  # type: ignore[arg-type]
        mapping.update(layout.get("fields", {}))
        if layout["source"]:
            mapping["source"] = layout["source"]
        mapping_path = tmp_path / f"{name}.yaml"
        mapping_path.write_text(yaml.safe_dump(mapping, sort_keys=False))
        cmd = [
            *(sys.executable, "-m", "moesif_backfill.cli", "run", layout["spec"]),
            *("--mapping", str(mapping_path), "--stream", stream, "--region", "us-east-1"),
            *("--endpoint-url", strict_firehose.endpoint_url),
            *("--s3-endpoint-url", moto_firehose.endpoint_url),
            *("--checkpoint", str(tmp_path / "ckpt"), "--job", f"layout-{name}"),
            *("--summary-json", str(tmp_path / f"{name}.json"), "--quiet"),
        ]  # fmt: skip
        env = dict(os.environ, PREFECT_API_URL=prefect_api)
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        return name, done, stream

    # A manifest whose record count is wrong stops the run before that entry is sent.
    wrong = layouts["redshift"]["objects"]["redshift/manifest"].replace(
        b'"record_count": 800', b'"record_count": 801'
    )
    s3.put_object(Bucket=bucket, Key="redshift-wrong/manifest", Body=wrong)
    layouts["redshift_wrong_count"] = dict(
        layouts["redshift"], spec=f"s3://{bucket}/redshift-wrong/manifest", objects={}
    )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(backfill, layouts))
    for name, done, stream in results:
        if name == "redshift_wrong_count":
            assert done.returncode == 2, done.stderr[-3000:]
            assert "0001_part_00" in done.stderr and "801" in done.stderr
            assert strict_firehose.transaction_ids(stream) == []
            continue
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        start, n = layouts[name]["ids"]
        delivered = strict_firehose.transaction_ids(stream)
        assert sorted(delivered) == sorted(expected_ids(start, n)), name
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary["accounted"] and summary["rows_read"] == n == summary["actions_sent"], name
        assert summary["sent_without_field"] == layouts[name].get("sent_without_field", {}), name
        if name == "spark":
            days = {
                json.loads(r)["metadata"]["export_day"] for r in strict_firehose.records(stream)
            }
            assert days == {"2026-11-20", "2026-11-21", "2026-11-22"}
