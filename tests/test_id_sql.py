"""`moesif-backfill sql`: ID contract v1 as SQL (transforms/id_sql.py, moesif_backfill/cli_sql.py).

DuckDB runs the generated query over every golden vector (tests/golden, the DST ones included;
the gap case must get no ID: NULL) and over generated Parquet and CSV exports with realistic
values; each `transaction_id` must equal the one the backfill itself sends (the rows read by
connectors.readers, turned into actions by transforms.actions.build_actions). The Snowflake and
BigQuery queries are not executed here: sqlglot parses them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlglot
import yaml
from sqlglot import exp

from connectors.discovery import discover_sources
from connectors.readers import iter_batches
from moesif_backfill.cli import main
from moesif_backfill.cli_sql import build_query
from moesif_backfill.errors import ConfigError, MappingError, UnsupportedKeyTypeError
from tests.test_ids_golden import CASES, arrow_array
from transforms.actions import build_actions
from transforms.id_sql import KeyColumn, transaction_id_sql
from transforms.mapping import load_mapping
from transforms.sql_dialects import DIALECTS

ROOT = Path(__file__).parent.parent
NS = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:billing.payments")


# ---------------------------------------------------------------------------------------------
# helpers


def write_mapping(
    path: Path,
    key: list[str],
    *,
    tz: str = "UTC",
    scope: str | None = "billing.payments",
    namespace: str | None = None,
    time_column: str = "created_at",
) -> Path:
    tid: dict[str, Any] = {"key": key}
    if namespace is not None:
        tid["namespace"] = namespace
    else:
        tid["scope"] = scope
    mapping = {
        "action_name": {"value": "Invoice line"},
        "time": {"column": time_column, "timezone": tz},
        "transaction_id": tid,
    }
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    return path


def duckdb_ids(query: str) -> list[str | None]:
    """The last column (transaction_id) of every row, in the table's order."""
    con = duckdb.connect()
    try:
        return [row[-1] for row in con.sql(query).fetchall()]
    finally:
        con.close()


def python_ids(mapping: Path, sample: Path) -> list[str | None]:
    """What the backfill sends for each row of `sample` (None: the row is rejected): the rows
    read as `run` reads them (key columns of text files as text) through build_actions."""
    spec = load_mapping(mapping)
    (src,) = discover_sources([str(sample)], spec.source)
    text = spec.key_columns() if src.format in ("csv", "ndjson") else ()
    out: list[str | None] = []
    for batch in iter_batches(src, text_columns=text, options=spec.source):
        actions = build_actions(batch, spec)
        ids: list[str | None] = [None] * batch.num_rows
        for pos, record in zip(actions.accepted.tolist(), actions.records.to_pylist(), strict=True):
            ids[pos] = json.loads(record)["transaction_id"]
        out.extend(ids)
    return out


def parquet_table(path: Path) -> str:
    return f"read_parquet('{path}')"


def csv_table(path: Path) -> str:
    # As the backfill reads CSV: every key as written; empty unquoted = null, "" = empty text.
    return f"read_csv('{path}', header = true, all_varchar = true, allow_quoted_nulls = false)"


# ---------------------------------------------------------------------------------------------
# golden vectors through DuckDB

UNSUPPORTED = {"float", "decimal"}  # decimals with a scale; scale 0 is an integer


def _supported(case: dict[str, Any]) -> bool:
    arrays = [arrow_array(item) for item in case["key"]]
    return not any(
        pa.types.is_floating(a.type) or (pa.types.is_decimal(a.type) and a.type.scale != 0)
        for a in arrays
    )


SUPPORTED = [c for c in CASES if _supported(c)]
REFUSED = [c for c in CASES if not _supported(c)]


def _golden_files(case: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    columns = {f"key {i}": arrow_array(item) for i, item in enumerate(case["key"])}
    columns["created_at"] = pa.array(["2024-01-01T00:00:00Z"])
    sample = tmp_path / "case.parquet"
    pq.write_table(pa.table(columns), sample)
    keys = [k for k in columns if k != "created_at"]
    mapping = write_mapping(
        tmp_path / "mapping.yaml",
        keys,
        tz=case["tz"],
        scope=case.get("scope"),
        namespace=case.get("namespace"),
    )
    return mapping, sample


def test_golden_split() -> None:
    """Every golden case is either run through DuckDB or refused by type (floats, decimals
    with a scale), and the DST cases (ambiguous, gap) are among those run."""
    assert len(SUPPORTED) + len(REFUSED) == len(CASES)
    ids = {c["id"] for c in SUPPORTED}
    assert {"timestamp-naive-ambiguous", "timestamp-naive-dst-gap"} <= ids
    assert {item["type"] for c in REFUSED for item in c["key"]} <= UNSUPPORTED | {"string"}
    assert len(SUPPORTED) >= 30


@pytest.mark.parametrize("case", SUPPORTED, ids=[c["id"] for c in SUPPORTED])
def test_golden_in_duckdb(case: dict[str, Any], tmp_path: Path) -> None:
    mapping, sample = _golden_files(case, tmp_path)
    query = build_query(mapping, str(sample), dialect_name="duckdb", table=parquet_table(sample))
    (got,) = duckdb_ids(query)
    # the golden ID, and what the backfill sends (a rejected row has none, and no ID in SQL)
    assert got == case.get("transaction_id")
    assert [got] == python_ids(mapping, sample)


@pytest.mark.parametrize("case", REFUSED, ids=[c["id"] for c in REFUSED])
def test_golden_refused_types(case: dict[str, Any], tmp_path: Path) -> None:
    mapping, sample = _golden_files(case, tmp_path)
    with pytest.raises(
        UnsupportedKeyTypeError, match=r"key column 'key 0' has type (double|decimal)"
    ):
        build_query(mapping, str(sample), dialect_name="duckdb")


# ---------------------------------------------------------------------------------------------
# a generated Parquet export with realistic values


def _transitions() -> list[dt.datetime]:
    """Wall-clock times around DST changes (gaps, repeated hours, a 30-minute change, years
    after 2037) in the zones the tests use."""
    anchors = [
        dt.datetime(2024, 3, 10, 2, 0),  # New York: 02:00-03:00 skipped
        dt.datetime(2024, 11, 3, 1, 0),  # New York: 01:00-02:00 twice
        dt.datetime(2040, 3, 11, 2, 0),  # New York, after 2037
        dt.datetime(2040, 11, 4, 1, 0),
        dt.datetime(2024, 3, 31, 2, 0),  # Berlin: 02:00-03:00 skipped
        dt.datetime(2024, 10, 27, 2, 0),  # Berlin: 02:00-03:00 twice
        dt.datetime(2024, 4, 7, 1, 30),  # Lord Howe: 01:30-02:00 twice
        dt.datetime(2024, 10, 6, 2, 0),  # Lord Howe: 02:00-02:30 skipped
    ]
    out = []
    for a in anchors:
        for minutes in range(-70, 80, 10):
            out.append(a + dt.timedelta(minutes=minutes, seconds=minutes % 7, microseconds=123))
    return out


def realistic_parquet(path: Path, n_random: int = 300) -> None:
    rng = random.Random(14)
    local = _transitions()
    local += [
        dt.datetime(2020, 1, 1) + dt.timedelta(seconds=rng.randint(0, 20 * 365 * 86_400))
        for _ in range(n_random)
    ]
    local += [dt.datetime(9999, 12, 31, 23, 0), dt.datetime(1, 1, 1, 0, 30)]  # out of range
    n = len(local)

    def maybe(value: Any, p: float = 0.05) -> Any:
        return None if rng.random() < p else value

    offsets = [dt.timezone(dt.timedelta(minutes=m)) for m in (-480, -300, 0, 330, 345, 600, 840)]
    instants = [
        dt.datetime(1960, 1, 1, tzinfo=rng.choice(offsets))
        + dt.timedelta(microseconds=rng.randint(0, 80 * 365 * 86_400 * 10**6))
        for _ in range(n)
    ]
    ns_epochs = [rng.randint(-(10**18), 2 * 10**18) for _ in range(n)]
    texts = ["", " x ", "a|b:c", "café", "日本", "000000", "0", "inv-🧾", 'quote "q"']
    table = pa.table(
        {
            "invoice_line_id": pa.array(
                [
                    maybe(f"{rng.randint(0, 10**7):09d}" if i % 10 else texts[i // 10 % len(texts)])
                    for i in range(n)
                ],
                pa.string(),
            ),
            "account_id": pa.array(
                [
                    maybe(rng.choice([rng.randint(10**19, 2**64 - 1), rng.randint(0, 999)]))
                    for _ in range(n)
                ],
                pa.uint64(),
            ),
            "line_no": pa.array(
                [maybe(rng.randint(-(2**63), 2**63 - 1)) for _ in range(n)], pa.int64()
            ),
            "big_id": pa.array(
                [maybe(decimal.Decimal(rng.randint(-(10**30), 10**30))) for _ in range(n)],
                pa.decimal128(38, 0),
            ),
            "billed_at": pa.array([maybe(v) for v in instants], pa.timestamp("us", tz="UTC")),
            "paid_at": pa.array([maybe(v) for v in ns_epochs], pa.timestamp("ns", tz="+05:30")),
            "local_at": pa.array([maybe(v, 0.02) for v in local], pa.timestamp("us")),
            "local_ns": pa.array([maybe(v) for v in ns_epochs], pa.timestamp("ns")),
            "local_ms": pa.array(
                [
                    maybe(
                        None if v is None else v.replace(microsecond=v.microsecond // 1000 * 1000)
                    )
                    for v in local
                ],
                pa.timestamp("ms"),
            ),
            "day": pa.array(
                [
                    maybe(dt.date(1, 1, 1) + dt.timedelta(days=rng.randint(0, 3_652_058)))
                    for _ in range(n)
                ],
                pa.date32(),
            ),
            "is_refund": pa.array([maybe(rng.random() < 0.5) for _ in range(n)], pa.bool_()),
            'Weird "Name"': pa.array([maybe(f"w{i % 13}", 0.3) for i in range(n)], pa.string()),
            "amount": pa.array([rng.random() * 1000 for _ in range(n)], pa.float64()),
            "created_at": pa.array(["2024-01-01T00:00:00Z"] * n),
        }
    )
    pq.write_table(table, path, row_group_size=128)


@pytest.fixture(scope="module")
def export_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "part-00000.parquet"
    realistic_parquet(path)
    return path


PARQUET_KEYS = {
    "text": ["invoice_line_id"],
    "ints": ["account_id", "line_no", "big_id"],
    "instants": ["billed_at", "paid_at"],
    "local": ["local_at"],
    "local-ns": ["local_ns", "is_refund"],
    "local-ms": ["local_ms"],
    "everything": [
        "invoice_line_id",
        "account_id",
        "line_no",
        "big_id",
        "billed_at",
        "paid_at",
        "local_at",
        "local_ns",
        "local_ms",
        "day",
        "is_refund",
        'Weird "Name"',
    ],
}
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Etc/GMT+5"]


PARQUET_CASES = [
    (key, zone)
    for key, cols in PARQUET_KEYS.items()
    for zone in ZONES
    if zone == "UTC" or any(c.startswith("local") for c in cols)  # zones: naive key times
]


@pytest.mark.parametrize(("key", "zone"), PARQUET_CASES, ids=[f"{k}-{z}" for k, z in PARQUET_CASES])
def test_parquet_export_in_duckdb(
    export_parquet: Path, tmp_path: Path, key: str, zone: str
) -> None:
    mapping = write_mapping(tmp_path / "m.yaml", PARQUET_KEYS[key], tz=zone)
    query = build_query(
        mapping, str(export_parquet), dialect_name="duckdb", table=parquet_table(export_parquet)
    )
    got = duckdb_ids(query)
    want = python_ids(mapping, export_parquet)
    assert len(got) == len(want) == pq.read_metadata(export_parquet).num_rows
    mismatches = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not mismatches, mismatches[:5]
    assert sum(w is not None for w in want) > len(want) // 2  # mostly real IDs, not NULL = NULL
    if key == "local" and zone == "America/New_York":  # the gap rows are there, without an ID
        assert sum(w is None for w in want) >= 6


# Zones with unusual offset changes: half-hour and 45-minute offsets and DST, negative DST
# (Dublin), DST at midnight, a skipped day (Apia 2011), 2-hour DST (Troll), permanent changes
# (Moscow, Caracas, Pyongyang, Kiritimati). Not Havana or Casablanca: the system's tzdata and
# DuckDB's ICU disagree on some of their offset changes after 2025 (a tz database version
# difference, see docs/transaction-id.md), and so do the IDs of naive times near them.
MANY_ZONES = [
    "America/New_York",
    "America/St_Johns",
    "America/Santiago",
    "America/Sao_Paulo",
    "Europe/Dublin",
    "Europe/Moscow",
    "Asia/Tehran",
    "Asia/Gaza",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Antarctica/Troll",
    "Pacific/Kiritimati",
    "America/Caracas",
    "Asia/Pyongyang",
    "America/Nuuk",
    "Africa/Cairo",
    "Asia/Colombo",
]


def test_naive_times_around_every_offset_change(tmp_path: Path) -> None:
    """Naive key times from 150 minutes before to 150 after every offset change of 1990-2036
    in zones with unusual rules: the SQL gives the backfill's ID, or NULL where it rejects."""
    start = int(dt.datetime(1990, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(2037, 1, 1, tzinfo=dt.UTC).timestamp())
    instants = np.arange(start, end, 900, dtype=np.int64)
    gaps = 0
    for zone in MANY_ZONES:
        local = pc.local_timestamp(pa.array(instants, pa.timestamp("s", tz=zone)))
        wall = local.cast(pa.int64()).to_numpy()
        changes = np.flatnonzero(np.diff(wall - instants) != 0) + 1
        assert len(changes), zone
        walls = [
            (int(wall[i]) + k * 900 + 7) * 10**6 + 123 for i in changes for k in range(-10, 11)
        ]
        sample = tmp_path / "zone.parquet"
        created = pa.array(["2024-01-01T00:00:00Z"] * len(walls))
        pq.write_table(
            pa.table({"t": pa.array(walls, pa.timestamp("us")), "created_at": created}), sample
        )
        mapping = write_mapping(tmp_path / "m.yaml", ["t"], tz=zone)
        query = build_query(
            mapping, str(sample), dialect_name="duckdb", table=parquet_table(sample)
        )
        want = python_ids(mapping, sample)
        assert duckdb_ids(query) == want, zone
        gaps += sum(w is None for w in want)
    assert gaps > 1000  # the gap times are there, and have no ID in either


def test_parquet_query_selects_the_source_columns(export_parquet: Path, tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path / "m.yaml", ["invoice_line_id"])
    query = build_query(
        mapping, str(export_parquet), dialect_name="duckdb", table=parquet_table(export_parquet)
    )
    con = duckdb.connect()
    rel = con.sql(query)
    source = pq.read_schema(export_parquet).names
    assert rel.columns == [*source, "transaction_id"]
    con.close()


# ---------------------------------------------------------------------------------------------
# a generated CSV export: keys are the text the export wrote


def realistic_csv(path: Path, n_random: int = 300) -> None:
    rng = random.Random(1414)
    offsets = ["Z", "+00:00", "-05:00", "+05:30", "+0545", "-03:30", "+14:00", ""]
    special = [
        "",
        "000123",
        "00000000000000000042",
        "18446744073709551615",
        "99999999999999999999",
        "1.50",
        "1E3",
        "-0",
        "café",
        "日本",
        "a|b:c",
        " x ",
        'say "hi", twice',
        "line\nbreak",
        "inv-🧾",
    ]
    rows: list[list[str | None]] = []
    dst_walls = ["2024-03-10 02:30:00", "2024-11-03 01:30:00", "2024-03-10T02:00:00.000001"]
    for i in range(n_random + len(special)):
        ts = dt.datetime(2024, 1, 1) + dt.timedelta(seconds=rng.randint(0, 366 * 86_400))
        text_ts = ts.strftime("%Y-%m-%dT%H:%M:%S") + (
            f".{rng.randint(0, 999999):06d}" if i % 3 else ""
        )
        created = dst_walls[i % 3] if i % 17 == 0 else text_ts + rng.choice(offsets)
        line = special[i] if i < len(special) else f"{rng.randint(0, 10**8):010d}"
        account = str(rng.randint(10**19, 10**20 - 1)) if i % 4 else f"{rng.randint(0, 999):05d}"
        rows.append(
            [
                None if i % 23 == 5 else line,
                None if i % 29 == 7 else account,
                created,
                None if i % 31 == 3 else f"{rng.randint(0, 99999) / 100:.2f}",
            ]
        )
    rows.append([None, None, "2024-01-01T00:00:00Z", None])  # every key null: rejected

    def field(v: str | None) -> str:
        return "" if v is None else '"' + v.replace('"', '""') + '"'

    lines = ["invoice_line_id,account_id,created_at,amount"]
    lines += [",".join(field(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def export_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "part-00000.csv"
    realistic_csv(path)
    return path


@pytest.mark.parametrize(
    "key",
    [
        ["invoice_line_id"],
        ["account_id", "invoice_line_id"],
        ["invoice_line_id", "created_at", "amount"],
    ],
    ids=["line", "account+line", "line+time+amount"],
)
def test_csv_export_in_duckdb(export_csv: Path, tmp_path: Path, key: list[str]) -> None:
    mapping = write_mapping(tmp_path / "m.yaml", key, tz="America/New_York")
    query = build_query(
        mapping, str(export_csv), dialect_name="duckdb", table=csv_table(export_csv)
    )
    assert "text export: load the key columns as text" in query
    got = duckdb_ids(query)
    want = python_ids(mapping, export_csv)
    assert len(got) == len(want) > 300
    mismatches = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not mismatches, mismatches[:5]
    if "created_at" not in key:
        assert want[-1] is None and got[-1] is None  # all key values null
    if key == ["invoice_line_id"]:  # text as written: leading zeros kept, "" is a value
        assert want[1] == str(uuid.uuid5(NS, "v1|6:000123"))
        assert want[0] == str(uuid.uuid5(NS, "v1|0:"))


# ---------------------------------------------------------------------------------------------
# Snowflake and BigQuery: parsed by sqlglot (not executed here)

ALL_KINDS = [
    KeyColumn("invoice line id", "text"),
    KeyColumn('Weird "Name" `x`', "integer"),
    KeyColumn("select", "boolean"),
    KeyColumn("Day", "date"),
    KeyColumn("billed_at", "timestamp_tz", nanos=True),
    KeyColumn("local_at", "timestamp_naive"),
]
DOCUMENTED = {
    # each warehouse's documented SHA-1 / UUID functions (transforms/sql_dialects.py)
    "duckdb": ["sha1(", "from_hex(", "encode(", "strlen("],
    "snowflake": ["UUID_STRING('74cdcccc-90cc-5d72-a612-8aa2cdefe58f', _mb_name)", "OCTET_LENGTH("],
    "bigquery": [
        "TO_HEX(SHA1(CONCAT(FROM_HEX('74cdcccc90cc5d72a6128aa2cdefe58f'), "
        "CAST(_mb_name AS BYTES))))",
        "FORMAT('%s-%s-5%s-%s%s-%s'",
        "BYTE_LENGTH(",
    ],
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_every_dialect_parses(dialect: str, tz: str) -> None:
    columns = [k.name for k in ALL_KINDS] + ["amount"]
    query = transaction_id_sql(
        NS,
        ALL_KINDS,
        columns,
        tz=tz,
        dialect_name=dialect,
        table="proj.ds.invoice_lines",  # type: ignore[arg-type]
        header=["a comment"],
    )
    (tree,) = sqlglot.parse(query, read=dialect)
    assert isinstance(tree, exp.Select)
    assert tree.named_selects == [*columns, "transaction_id"]
    for piece in DOCUMENTED[dialect]:
        assert piece in query
    # the source columns are quoted identifiers, whatever their names
    assert all(sel.this.quoted for sel in tree.selects[: len(columns)])
    table = tree.find(exp.Table)
    assert table is not None and table.sql(dialect=dialect) == "proj.ds.invoice_lines AS _mb_s0"


def test_snowflake_uuid_string_is_uuid5() -> None:
    """Snowflake's documented example of UUID_STRING(namespace, name) is Python's uuid5."""
    ns = uuid.UUID("fe971b24-9572-4005-b22f-351e9c09274d")
    assert str(uuid.uuid5(ns, "foo")) == "dc0b6f65-fca6-5b4b-9d37-ccc3fde1f3e2"


def test_quoted_identifiers_in_duckdb(tmp_path: Path) -> None:
    """Key columns named like keywords, with quotes, blanks, other letter case or non-ASCII."""
    names = ["select", 'a "quoted" name', "Mixed Case", "naïve ключ"]
    sample = tmp_path / "odd.parquet"
    columns = {n: pa.array([f"{n}-1", None, f"{n}-3"]) for n in names}
    columns["created_at"] = pa.array(["2024-01-01T00:00:00Z"] * 3)
    pq.write_table(pa.table(columns), sample)
    mapping = write_mapping(tmp_path / "m.yaml", names[:4])
    query = build_query(mapping, str(sample), dialect_name="duckdb", table=parquet_table(sample))
    assert duckdb_ids(query) == python_ids(mapping, sample)
    # the mapping may name a column in another letter case: the file's own name is used
    mapping = write_mapping(tmp_path / "m2.yaml", ["mixed case"])
    query = build_query(mapping, str(sample), dialect_name="duckdb", table=parquet_table(sample))
    assert duckdb_ids(query) == python_ids(
        write_mapping(tmp_path / "m3.yaml", ["Mixed Case"]), sample
    )


# ---------------------------------------------------------------------------------------------
# errors

REFUSED_TYPES = [
    (pa.array([1.5]), "double"),
    (pa.array([1.5], pa.float32()), "float"),
    (pa.array([decimal.Decimal("12.34")], pa.decimal128(10, 2)), "decimal128(10, 2)"),
    (pa.array([decimal.Decimal(10**39)], pa.decimal256(40, 0)), "decimal256(40, 0)"),
    (pa.array([{"a": 1}]), "struct<a: int64>"),
    (pa.array([[1, 2]]), "list<element: int64>"),
    (pa.array([b"\x00"]), "binary"),
    (pa.array([dt.time(1, 2)]), "time64[us]"),
    (pa.nulls(1), "null"),
]


@pytest.mark.parametrize(("array", "shown"), REFUSED_TYPES, ids=[s for _, s in REFUSED_TYPES])
def test_unsupported_key_type(
    tmp_path: Path, array: pa.Array, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "s.parquet"
    pq.write_table(pa.table({"line": ["a"], "odd key": array, "created_at": ["x"]}), sample)
    mapping = write_mapping(tmp_path / "m.yaml", ["line", "odd key"])
    with pytest.raises(UnsupportedKeyTypeError) as info:
        build_query(mapping, str(sample), dialect_name="bigquery")
    assert f"key column 'odd key' has type {shown}" in str(info.value)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    code = main(["sql", "--mapping", str(mapping), "--sample", str(sample), "--dialect", "duckdb"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("error: transaction_id key column 'odd key' has type")


def test_text_sample_takes_keys_as_text(tmp_path: Path) -> None:
    """CSV and NDJSON samples: the key columns are text as written, whatever they look like
    (a float-looking or time-looking value is not refused)."""
    csv_sample = tmp_path / "s.csv"
    csv_sample.write_text("k,amount,created_at\n1.50,2.5,2024-01-01T00:00:00\n", encoding="utf-8")
    ndjson_sample = tmp_path / "s.ndjson"
    ndjson_sample.write_text(
        '{"k": 1.50, "amount": 2.5, "created_at": "2024-01-01"}\n', encoding="utf-8"
    )
    for sample in (csv_sample, ndjson_sample):
        for key in (["k"], ["amount", "created_at"]):
            mapping = write_mapping(tmp_path / "m.yaml", key)
            query = build_query(mapping, str(sample), dialect_name="duckdb")
            assert "(text as is)" in query and "text export" in query


def test_existing_uuid_column_is_refused(tmp_path: Path) -> None:
    sample = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": [str(uuid.uuid4())], "created_at": ["x"]}), sample)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "action_name: {value: a}\ntime: created_at\ntransaction_id: {column: id}\n",
        encoding="utf-8",
    )
    with pytest.raises(MappingError, match=r"taken from column 'id'.*needs `key`"):
        build_query(mapping, str(sample), dialect_name="duckdb")


def test_sample_must_be_one_file(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pa.table({"k": ["a"], "created_at": ["x"]}), tmp_path / "export" / name)
    mapping = write_mapping(tmp_path / "m.yaml", ["k"])
    with pytest.raises(ConfigError, match="matches 2 files; give one file"):
        build_query(mapping, str(tmp_path / "export"), dialect_name="duckdb")


def test_missing_key_column_names_the_columns(tmp_path: Path) -> None:
    sample = tmp_path / "s.parquet"
    pq.write_table(pa.table({"k": ["a"], "created_at": ["x"]}), sample)
    mapping = write_mapping(tmp_path / "m.yaml", ["nope"])
    with pytest.raises(MappingError, match=r"'nope', which this file does not have.*k, created_at"):
        build_query(mapping, str(sample), dialect_name="duckdb")


# ---------------------------------------------------------------------------------------------
# the CLI prints the query and nothing else


def test_cli_prints_only_the_query(
    export_parquet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write_mapping(
        tmp_path / "m.yaml", ["invoice_line_id", "local_at"], tz="America/New_York"
    )
    table = parquet_table(export_parquet)
    argv = [
        "sql",
        "--mapping",
        str(mapping),
        "--sample",
        str(export_parquet),
        "--dialect",
        "duckdb",
    ]
    assert main([*argv, "--table", table]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert (
        out == build_query(mapping, str(export_parquet), dialect_name="duckdb", table=table) + "\n"
    )
    assert duckdb_ids(out) == python_ids(mapping, export_parquet)
    assert main(argv) == 0  # without --table: a placeholder name
    out, _ = capsys.readouterr()
    assert "FROM export_table AS _mb_s0" in out


@pytest.mark.e2e
def test_cli_subprocess_stdout_is_the_query(export_parquet: Path, tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path / "m.yaml", ["account_id", "billed_at"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moesif_backfill.cli",
            "sql",
            "--mapping",
            str(mapping),
            "--sample",
            str(export_parquet),
            "--dialect",
            "snowflake",
            "--table",
            "DB.S.LINES",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    (tree,) = sqlglot.parse(proc.stdout, read="snowflake")
    assert tree.named_selects[-1] == "transaction_id"
    assert proc.stdout.startswith("-- transaction_id by moesif-backfill ID contract v1")


# ---------------------------------------------------------------------------------------------
# docs/transaction-id.md shows what the command prints

DOC_TABLES = {
    "duckdb": (
        "read_csv('payments.csv', header = true, all_varchar = true, allow_quoted_nulls = false)"
    ),
    "snowflake": "BILLING.EXPORTS.PAYMENTS",
    "bigquery": "billing_exports.payments",
}


def test_docs_show_the_three_dialects(tmp_path: Path) -> None:
    """The three queries in docs/transaction-id.md are the command's output for the bundled
    example, the DuckDB one gives the backfill's IDs, and the docs say what was executed."""
    sample = tmp_path / "payments.csv"
    subprocess.run(
        [sys.executable, "examples/make_sample.py", "--out", str(sample), "--rows", "200"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    doc = (ROOT / "docs" / "transaction-id.md").read_text(encoding="utf-8")
    section = doc[doc.index("## In the warehouse") : doc.index("## Change log")]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    mapping = ROOT / "examples" / "mapping.yaml"
    for dialect, block in zip(DIALECTS, blocks, strict=True):
        query = build_query(mapping, str(sample), dialect_name=dialect, table=DOC_TABLES[dialect])
        assert block == query + "\n", dialect
    duck = blocks[0].replace("'payments.csv'", f"'{sample}'")
    assert duckdb_ids(duck) == python_ids(mapping, sample)
    assert "DuckDB (executed in the tests)" in section
    assert "Snowflake (not executed here)" in section and "BigQuery (not executed here)" in section


def test_computed_column_name_must_be_new(tmp_path: Path) -> None:
    sample = tmp_path / "s.parquet"
    columns = {"k": ["a"], "Transaction_ID": ["x"], "created_at": ["2024-01-01T00:00:00Z"]}
    pq.write_table(pa.table(columns), sample)
    mapping = write_mapping(tmp_path / "m.yaml", ["k"])
    with pytest.raises(ConfigError, match="already has a column 'transaction_id'"):
        build_query(mapping, str(sample), dialect_name="duckdb")
    query = build_query(
        mapping, str(sample), dialect_name="duckdb", table=parquet_table(sample), id_column="tid"
    )
    assert duckdb_ids(query) == python_ids(mapping, sample)
