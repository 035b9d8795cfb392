"""Test data: billing-like files and the transaction_ids the ID contract says they must get.

`expected_id` is computed from the contract text with the standard library only, independent of
the project's code, so a test comparing delivered IDs with it checks the contract itself.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import yaml

SCOPE = "billing.payments"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + SCOPE)

MAPPING = {
    "action_name": {"value": "Processed Payment Transaction"},
    "company_id": "customer_id",
    "user_id": "user_id",
    "time": {"column": "created_at", "timezone": "UTC"},
    "request": {"uri": {"value": "https://billing.example.com/payments"}},
    "metadata": {"amount": "amount", "currency": "currency", "pipeline": {"value": "test"}},
    "transaction_id": {"scope": SCOPE, "key": ["invoice_line_id"]},
}


def line_id(i: int) -> str:
    return f"il_{i:07d}"


def expected_id(i: int) -> str:
    text = line_id(i)
    return str(uuid.uuid5(NAMESPACE, f"v1|{len(text.encode())}:{text}"))


def expected_ids(start: int, n: int) -> set[str]:
    return {expected_id(i) for i in range(start, start + n)}


def payments_table(start: int, n: int, *, now: dt.datetime | None = None) -> pa.Table:
    now = now or dt.datetime.now(dt.UTC)
    ids = range(start, start + n)
    return pa.table(
        {
            "invoice_line_id": [line_id(i) for i in ids],
            "customer_id": [f"cus_{i % 97:03d}" for i in ids],
            "user_id": [None if i % 10 == 0 else f"user_{i % 1000}" for i in ids],
            "created_at": pa.array(
                [now - dt.timedelta(minutes=i % 5000) for i in ids], pa.timestamp("us", "UTC")
            ),
            "amount": pa.array([(i % 10_000) / 100 for i in ids], pa.float64()),
            "currency": ["USD" if i % 3 else "EUR" for i in ids],
        }
    )


def write_payments(path: Path, start: int, n: int, **kw: object) -> Path:
    table = payments_table(start, n, **kw)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=5_000)
    return path


def write_mapping(path: Path, mapping: dict[str, object] | None = None) -> Path:
    path.write_text(yaml.safe_dump(mapping or MAPPING, sort_keys=False), encoding="utf-8")
    return path


def ids_of(records: list[bytes]) -> list[str]:
    return [json.loads(r)["transaction_id"] for r in records]
