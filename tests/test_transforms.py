"""Unit tests for transforms/: the mapping file, time parsing and the action JSON.

Expected transaction_ids are computed here with `uuid.uuid5` straight from the contract
(docs/transaction-id.md), not with the project's ID code. Every record any test produces is
parsed with `json.loads`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from moesif_backfill.errors import MappingError
from pipeline.day_window import outside_window
from transforms.actions import (
    MAX_ACTION_BYTES,
    R_BAD_UUID,
    R_KEY_MISSING,
    R_KEY_NONFINITE,
    R_NAME_MISSING,
    R_TIME_BAD,
    R_TIME_MISSING,
    R_TOO_LARGE,
    ActionBatch,
    build_actions,
    time_bounds,
)
from transforms.mapping import (
    ColumnSource,
    MappingSpec,
    ValueSource,
    load_mapping,
    parse_mapping,
)
from transforms.schema_match import resolve_mapping
from transforms.time_format import format_epoch
from transforms.times import to_epoch_us

D = decimal.Decimal
NY = "America/New_York"
SCOPE = "billing.payments"
NS = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + SCOPE)
T0 = "2024-05-01T12:00:00Z"


def tid(*texts: str | None) -> str:
    """The v1 transaction_id of a key whose canon() texts are given (None = null part)."""
    name = "v1" + "".join("|~" if t is None else f"|{len(t.encode())}:{t}" for t in texts)
    return str(uuid.uuid5(NS, name))


def spec_of(**fields: Any) -> MappingSpec:
    data: dict[str, Any] = {
        "action_name": {"value": "Processed Payment Transaction"},
        "time": "t",
        "transaction_id": {"scope": SCOPE, "key": ["id"]},
    }
    data.update(fields)
    return parse_mapping(data)


def run(spec: MappingSpec, columns: dict[str, Any]) -> ActionBatch:
    n = len(next(iter(columns.values())))
    columns = {"t": [T0] * n, **columns}
    arrays = [v if isinstance(v, pa.Array) else pa.array(v) for v in columns.values()]
    res = build_actions(pa.RecordBatch.from_arrays(arrays, names=list(columns)), spec)
    assert len(res.records) == len(res.accepted)
    assert len(res.accepted) + len(res.rejected) == n
    assert len(res.reasons) == len(res.rejected)
    return res


def records(res: ActionBatch) -> list[dict[str, Any]]:
    return [json.loads(r) for r in res.records.to_pylist()]


def epoch_text(arr: pa.Array, *, tz: str = "UTC", unit: str | None = None) -> list[str | None]:
    """Time column -> request.time strings (milliseconds, truncated)."""
    us, bad = to_epoch_us(arr, tz=tz, unit=unit)
    assert not bad.any()
    return format_epoch(_floor_ms(us), unit="ms").to_pylist()


def _floor_ms(us: pa.Array) -> pa.Array:
    vals = us.to_pylist()
    return pa.array([None if v is None else v // 1000 for v in vals], pa.int64())


# =============================================================================================
# mapping


def test_mapping_shorthand_and_defaults() -> None:
    spec = parse_mapping(
        {
            "action_name": "event_type",
            "company_id": "customer_id",
            "user_id": {"column": "user_id"},
            "time": "created_at",
            "request": {
                "uri": {"value": "https://billing.example.com/payments"},
                "ip_address": "ip",
            },
            "metadata": {"amount": "amount", "pipeline": {"value": "backfill"}, 7: "seven"},
            "transaction_id": {"scope": SCOPE, "key": ["invoice_line_id"]},
        }
    )
    assert spec.action_name == ColumnSource(column="event_type")
    assert spec.company_id == ColumnSource(column="customer_id")
    assert spec.user_id == ColumnSource(column="user_id")
    assert spec.subscription_id is None
    assert spec.time.column == "created_at"
    assert spec.time.timezone == "UTC"
    assert spec.time.unit is None
    assert spec.request.uri == ValueSource(value="https://billing.example.com/payments")
    assert spec.request.ip_address == ColumnSource(column="ip")
    assert spec.metadata == {
        "amount": ColumnSource(column="amount"),
        "pipeline": ValueSource(value="backfill"),
        "7": ColumnSource(column="seven"),
    }
    assert spec.referenced_columns() == [
        "event_type",
        "customer_id",
        "user_id",
        "ip",
        "amount",
        "seven",
        "created_at",
        "invoice_line_id",
    ]


def test_mapping_file_from_the_issue(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(
        """\
action_name: {value: "Processed Payment Transaction"}   # required; or {column: event_type}
company_id: customer_id
user_id: user_id
subscription_id: sub_id
session_token: token
time: {column: created_at, timezone: "UTC"}
request:
  uri: {value: "https://billing.example.com/payments"}
  ip_address: ip
  user_agent_string: ua
metadata:
  amount: amount
  currency: currency
  pipeline: {value: "backfill"}
transaction_id:
  scope: "billing.payments"
  key: [invoice_line_id]
""",
        encoding="utf-8",
    )
    spec = load_mapping(path)
    assert spec.session_token == ColumnSource(column="token")
    assert spec.request.user_agent_string == ColumnSource(column="ua")
    assert spec.transaction_id.namespace_uuid() == NS
    assert spec.key_columns() == ["invoice_line_id"]


def test_unknown_field_error_text() -> None:
    with pytest.raises(MappingError) as err:
        spec_of(compnay_id="customer_id")
    text = str(err.value)
    assert "compnay_id" in text
    assert "unknown field" in text
    with pytest.raises(MappingError, match=r"time\.zone: unknown field"):
        spec_of(time={"column": "t", "zone": "UTC"})


@pytest.mark.parametrize(
    ("tid_spec", "message"),
    [
        ({"scope": SCOPE}, "missing `key`"),
        ({"scope": SCOPE, "key": []}, "key"),
        ({"key": ["id"]}, "exactly one of `scope`"),
        (
            {"scope": SCOPE, "namespace": "6ba7b811-9dad-11d1-80b4-00c04fd430c8", "key": ["id"]},
            "exactly one of `scope`",
        ),
        ({"namespace": "not-a-uuid", "key": ["id"]}, "namespace"),
        ({"column": "uuid", "key": ["id"]}, "not both"),
        ({"column": "uuid", "scope": SCOPE}, "not both"),
    ],
)
def test_transaction_id_spec_errors(tid_spec: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        spec_of(transaction_id=tid_spec)


def test_missing_required_fields() -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping({"time": "t"})
    assert "action_name" in str(err.value)
    assert "transaction_id" in str(err.value)
    with pytest.raises(MappingError, match="must be a YAML mapping"):
        parse_mapping(["action_name"])


def test_scope_vs_namespace() -> None:
    by_scope = spec_of(transaction_id={"scope": "billing.usage", "key": ["id"]})
    assert by_scope.transaction_id.namespace_uuid() == uuid.uuid5(
        uuid.NAMESPACE_URL, "moesif-backfill:billing.usage"
    )
    given = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    by_ns = spec_of(transaction_id={"namespace": given.upper(), "key": ["id"]})
    assert by_ns.transaction_id.namespace_uuid() == uuid.UUID(given)
    res = run(by_ns, {"id": ["inv-1"]})
    assert records(res)[0]["transaction_id"] == str(uuid.uuid5(uuid.UUID(given), "v1|5:inv-1"))
    existing = spec_of(transaction_id={"column": "uuid"})
    assert existing.key_columns() == ["uuid"]


def test_fingerprint() -> None:
    a = spec_of(company_id="c", metadata={"x": "x", "y": "y"})
    b = parse_mapping(
        {
            "metadata": {"y": {"column": "y"}, "x": "x"},
            "company_id": {"column": "c"},
            "transaction_id": {"key": ["id"], "scope": SCOPE},
            "time": {"column": "t"},
            "action_name": {"value": "Processed Payment Transaction"},
        }
    )
    assert a.fingerprint() == b.fingerprint()
    c = spec_of(company_id="c", transaction_id={"scope": "other", "key": ["id"]})
    assert c.fingerprint() != a.fingerprint()


def test_load_mapping_errors(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read mapping file"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("action_name: [unclosed\ntime: t\n", encoding="utf-8")
    with pytest.raises(MappingError, match=r"line \d+, column \d+ is not valid YAML"):
        load_mapping(bad)


def _schema(**types: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(name, t) for name, t in types.items()])


def test_column_lookup_exact_then_case_insensitive() -> None:
    spec = spec_of(company_id="customer_id", metadata={"amount": "Amount"})
    schema = _schema(
        T=pa.string(), ID=pa.string(), CUSTOMER_ID=pa.string(), amount=pa.int64(), Amount=pa.int64()
    )
    resolved = resolve_mapping(spec, schema, origin="export.parquet")
    assert resolved.columns == {
        "customer_id": "CUSTOMER_ID",
        "Amount": "Amount",  # exact match wins over the other case-insensitive match
        "t": "T",
        "id": "ID",
    }
    batch = pa.RecordBatch.from_pydict(
        {"T": [T0], "ID": ["inv-1"], "CUSTOMER_ID": ["acme"], "amount": [1], "Amount": [2]}
    )
    logical = resolved.to_logical(batch)
    assert logical.schema.names == ["customer_id", "Amount", "t", "id"]
    [rec] = records(build_actions(logical, spec))
    assert rec["company_id"] == "acme"
    assert rec["metadata"] == {"amount": 2}
    assert rec["transaction_id"] == tid("inv-1")


def test_ambiguous_column() -> None:
    spec = spec_of(metadata={"amount": "amount"})
    schema = _schema(t=pa.string(), id=pa.string(), Amount=pa.int64(), AMOUNT=pa.int64())
    with pytest.raises(MappingError) as err:
        resolve_mapping(spec, schema, origin="export.parquet")
    text = str(err.value)
    assert "ambiguous" in text
    assert "Amount" in text
    assert "AMOUNT" in text
    assert "export.parquet" in text


def test_missing_column_lists_available_columns() -> None:
    spec = spec_of(company_id="customer")
    schema = _schema(t=pa.string(), id=pa.string(), customer_id=pa.string())
    with pytest.raises(MappingError) as err:
        resolve_mapping(spec, schema, origin="data.csv")
    text = str(err.value)
    assert "data.csv" in text
    assert "company_id" in text
    assert "'customer'" in text
    assert "Available columns: t, id, customer_id" in text


def test_missing_key_column() -> None:
    spec = spec_of(transaction_id={"scope": SCOPE, "key": ["id", "line_no"]})
    with pytest.raises(MappingError, match="transaction_id names column 'line_no'"):
        resolve_mapping(spec, _schema(t=pa.string(), id=pa.string()), origin="f")


@pytest.mark.parametrize("time_type", [pa.int64(), pa.int32(), pa.float64()])
def test_numeric_time_needs_unit(time_type: pa.DataType) -> None:
    schema = _schema(t=time_type, id=pa.string())
    with pytest.raises(MappingError, match="epoch unit"):
        resolve_mapping(spec_of(), schema, origin="f")
    resolve_mapping(spec_of(time={"column": "t", "unit": "ms"}), schema, origin="f")


def test_time_and_key_column_types() -> None:
    with pytest.raises(MappingError, match="time column 't' has type bool"):
        resolve_mapping(spec_of(), _schema(t=pa.bool_(), id=pa.string()), origin="f")
    for ok in (pa.timestamp("ns"), pa.date32(), pa.large_string()):
        resolve_mapping(spec_of(), _schema(t=ok, id=pa.string()), origin="f")
    nested = _schema(t=pa.string(), id=pa.list_(pa.int64()))
    with pytest.raises(MappingError, match="no canonical text"):
        resolve_mapping(spec_of(), nested, origin="f")


def test_bad_timezone() -> None:
    with pytest.raises(MappingError, match="unknown IANA time zone 'Mars/Olympus'"):
        spec_of(time={"column": "t", "timezone": "Mars/Olympus"})
    with pytest.raises(MappingError, match="unit"):
        spec_of(time={"column": "t", "unit": "minutes"})
    assert spec_of(time={"column": "t", "timezone": NY}).time.timezone == NY


# =============================================================================================
# time parsing


def test_tz_aware_timestamps_to_utc() -> None:
    plus_530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
    arr = pa.array([dt.datetime(2024, 1, 1, 5, 30, tzinfo=plus_530)], pa.timestamp("us", plus_530))
    assert arr.type.tz == "+05:30"
    assert epoch_text(arr, tz=NY) == ["2024-01-01T00:00:00.000Z"]  # the zone is not used
    berlin = pa.array([0], pa.timestamp("s", tz="Europe/Berlin"))
    assert epoch_text(berlin) == ["1970-01-01T00:00:00.000Z"]


def test_naive_timestamps_in_zone() -> None:
    arr = pa.array(
        [
            dt.datetime(2024, 1, 15, 9, 0),  # EST
            dt.datetime(2024, 7, 15, 9, 0),  # EDT
            dt.datetime(2024, 11, 3, 1, 30),  # ambiguous: the earlier instant (EDT)
            dt.datetime(2024, 3, 10, 2, 30),  # in the gap: the offset before it (EST)
            dt.datetime(2040, 7, 1, 9, 0),  # after 2037 the zone's rule still applies
            None,
        ],
        pa.timestamp("us"),
    )
    assert epoch_text(arr, tz=NY) == [
        "2024-01-15T14:00:00.000Z",
        "2024-07-15T13:00:00.000Z",
        "2024-11-03T05:30:00.000Z",
        "2024-03-10T07:30:00.000Z",
        "2040-07-01T13:00:00.000Z",
        None,
    ]
    assert epoch_text(arr.slice(0, 1), tz="UTC") == ["2024-01-15T09:00:00.000Z"]


T0_NAIVE = dt.datetime(2024, 5, 1, 8, 0)  # 12:00Z in New York (EDT)
GAP_REASON = (
    "nonexistent local time {} in America/New_York (DST gap): set the zone the source really "
    "used, e.g. a fixed offset"
)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_dst_gap_time_in_a_key_rejects_the_row(unit: str) -> None:
    """A naive key time inside the skipped hour has no instant: b96172b read every such time
    as 03:00 (02:20 and 02:40 shared one ID, so Moesif kept one row), and fold=0 would give
    02:05 the ID of the real 03:05. Now each is rejected, naming the value and the zone."""
    walls = [
        dt.datetime(2026, 3, 8, 2, 20),
        dt.datetime(2026, 3, 8, 2, 40),
        dt.datetime(2026, 3, 8, 3, 5),  # EDT: exists
        dt.datetime(2026, 3, 8, 2, 5),
        dt.datetime(2026, 11, 1, 1, 30),  # ambiguous: the earlier instant, as before
        dt.datetime(2040, 3, 11, 2, 30, 15),  # after 2037 (the zoneinfo path)
    ]
    spec = spec_of(
        time={"column": "t", "timezone": NY},
        transaction_id={"scope": SCOPE, "key": ["id", "t"]},
    )
    res = run(spec, {"t": pa.array(walls, pa.timestamp(unit)), "id": ["inv-1"] * len(walls)})
    assert res.rejected.tolist() == [0, 1, 3, 5]
    assert res.reasons == [
        GAP_REASON.format("2026-03-08 02:20"),
        GAP_REASON.format("2026-03-08 02:40"),
        GAP_REASON.format("2026-03-08 02:05"),
        GAP_REASON.format("2040-03-11 02:30:15"),
    ]
    sent = records(res)
    assert [a["transaction_id"] for a in sent] == [
        tid("inv-1", "2026-03-08T07:05:00.000000Z"),
        tid("inv-1", "2026-11-01T05:30:00.000000Z"),
    ]
    assert [a["request"]["time"] for a in sent] == [
        "2026-03-08T07:05:00.000Z",
        "2026-11-01T05:30:00.000Z",
    ]


def test_dst_gap_time_in_a_second_key_column_names_that_value() -> None:
    spec = spec_of(
        time={"column": "t", "timezone": NY},
        transaction_id={"scope": SCOPE, "key": ["id", "paid", "booked"]},
    )
    ts = pa.timestamp("us")
    res = run(
        spec,
        {
            "id": ["a", "b", "c"],
            "paid": pa.array([dt.datetime(2026, 3, 8, 2, 20, 0, 500), None, None], ts),
            "booked": pa.array([dt.datetime(2026, 3, 8, 2, 59, 59), None, T0_NAIVE], ts),
        },
    )
    assert res.rejected.tolist() == [0]  # the first key column's value is named
    assert res.reasons == [GAP_REASON.format("2026-03-08 02:20:00.000500")]
    assert [a["transaction_id"] for a in records(res)] == [
        tid("b", None, None),
        tid("c", None, "2024-05-01T12:00:00.000000Z"),
    ]


@pytest.mark.parametrize("form", ["timestamp", "dictionary_text", "naive_text", "mixed_text"])
def test_dst_gap_time_only_in_time_uses_the_offset_before_the_gap(form: str) -> None:
    """Not in the key: the time is sent with the offset in force before the gap (fold=0),
    02:20 -> 07:20Z (b96172b sent 07:00Z), and the time-window and 30-day checks (which use
    `time_bounds`) see that same instant."""
    walls = ["2026-03-08 02:20:00", "2040-03-11 02:30:00", "2026-11-01 01:30:00"]
    t: pa.Array
    if form == "timestamp":
        t = pa.array([dt.datetime.fromisoformat(w) for w in walls], pa.timestamp("ms"))
    elif form == "dictionary_text":
        t = pa.array(walls).dictionary_encode()
    elif form == "naive_text":
        t = pa.array([w.replace(" ", "T") for w in walls])
    else:
        t = pa.array([*walls, "2026-03-08T02:20:00-05:00"])
    spec = spec_of(time={"column": "t", "timezone": NY})
    res = run(spec, {"t": t, "id": [f"r{i}" for i in range(len(t))]})
    assert res.rejected.tolist() == []
    expected = ["2026-03-08T07:20:00.000Z", "2040-03-11T07:30:00.000Z", "2026-11-01T05:30:00.000Z"]
    if form == "mixed_text":
        expected.append("2026-03-08T07:20:00.000Z")
    assert [a["request"]["time"] for a in records(res)] == expected
    us, bad = time_bounds(t, spec)
    assert not bad.any() and us.equals(res.epoch_us)
    start = 1_772_954_400_000_000  # 2026-03-08T07:20:00Z
    assert int(us[0].as_py()) == start
    batch = pa.RecordBatch.from_arrays([t], names=["t"])
    assert outside_window(batch, spec, (start, start + 1)).tolist()[0] is False
    assert outside_window(batch, spec, (start + 1, None)).tolist()[0] is True


def test_a_date_whose_midnight_is_in_a_gap() -> None:
    """Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04: a date key is its
    "YYYY-MM-DD" text (never localized, so never in a gap) and, as the time, midnight with the
    offset before the gap is the first instant of the day (03:00Z), as before."""
    day = pa.array([dt.date(2018, 11, 4)], pa.date32())
    spec = spec_of(
        time={"column": "t", "timezone": "America/Sao_Paulo"},
        transaction_id={"scope": SCOPE, "key": ["d"]},
    )
    res = run(spec, {"t": day, "d": day})
    assert [(a["transaction_id"], a["request"]["time"]) for a in records(res)] == [
        (tid("2018-11-04"), "2018-11-04T03:00:00.000Z")
    ]


@pytest.mark.parametrize("date_type", [pa.date32(), pa.date64()])
def test_dates_are_midnight_in_zone(date_type: pa.DataType) -> None:
    arr = pa.array([dt.date(2024, 1, 1), dt.date(2024, 7, 1), None], date_type)
    assert epoch_text(arr, tz=NY) == ["2024-01-01T05:00:00.000Z", "2024-07-01T04:00:00.000Z", None]
    assert epoch_text(arr, tz="Asia/Tokyo")[0] == "2023-12-31T15:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        ("2024-01-01T00:00:00Z", NY, "2024-01-01T00:00:00.000Z"),
        ("2024-01-01T00:00:00z", NY, "2024-01-01T00:00:00.000Z"),
        ("2024-01-01T00:00:00+01:00", NY, "2023-12-31T23:00:00.000Z"),
        ("2024-01-01T00:00:00-0230", "UTC", "2024-01-01T02:30:00.000Z"),
        ("2024-01-01T00:00:00", NY, "2024-01-01T05:00:00.000Z"),
        ("2024-01-01 00:00:00", "Europe/Berlin", "2023-12-31T23:00:00.000Z"),
        ("2024-01-01 00:00:00 UTC", NY, "2024-01-01T00:00:00.000Z"),
        ("2024-01-01T00:00:00.123456789Z", NY, "2024-01-01T00:00:00.123Z"),
        ("2024-01-01T00:00:00.123456789", NY, "2024-01-01T05:00:00.123Z"),
        ("2024-01-01T00:00:00.9999+00:00", "UTC", "2024-01-01T00:00:00.999Z"),
        ("2024-01-01", NY, "2024-01-01T05:00:00.000Z"),
        ("  2024-01-01T00:00:00Z  ", "UTC", "2024-01-01T00:00:00.000Z"),
    ],
)
def test_iso_strings(text: str, tz: str, expected: str) -> None:
    assert epoch_text(pa.array([text, None]), tz=tz) == [expected, None]
    # the same value inside a column that mixes forms (the per-value path)
    mixed = pa.array(["2024-06-01T00:00:00", text, "2024-06-01T00:00:00+02:00"])
    assert epoch_text(mixed, tz=tz)[1] == expected


def test_unparseable_strings_are_flagged() -> None:
    arr = pa.array(["2024-01-01T00:00:00Z", "yesterday", None, "", "2024-13-01T00:00:00Z"])
    us, bad = to_epoch_us(arr, tz="UTC", unit=None)
    assert bad.tolist() == [False, True, False, True, True]
    assert us.is_null().to_pylist() == [False, True, True, True, True]


@pytest.mark.parametrize(
    ("unit", "value"),
    [
        ("s", 1_714_564_800),
        ("ms", 1_714_564_800_123),
        ("us", 1_714_564_800_123_456),
        ("ns", 1_714_564_800_123_456_789),
    ],
)
def test_epoch_units(unit: str, value: int) -> None:
    expected = "2024-05-01T12:00:00.000Z" if unit == "s" else "2024-05-01T12:00:00.123Z"
    assert epoch_text(pa.array([value, None], pa.int64()), unit=unit) == [expected, None]
    spec = spec_of(time={"column": "t", "unit": unit})
    [rec] = records(run(spec, {"t": pa.array([value], pa.int64()), "id": ["a"]}))
    assert rec["request"]["time"] == expected


def test_epoch_out_of_range_is_flagged() -> None:
    _us, bad = to_epoch_us(pa.array([0, 10**15], pa.int64()), tz="UTC", unit="s")
    assert bad.tolist() == [False, True]


def test_millisecond_truncation_including_before_1970() -> None:
    spec = spec_of()
    times = pa.array(
        [
            dt.datetime(2024, 1, 1, 0, 0, 0, 999_999),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999_999),
            dt.datetime(1969, 12, 31, 23, 59, 59, 1),
            dt.datetime(1960, 6, 1, 12, 0, 0, 500),
            dt.datetime(1, 1, 1, 0, 0, 0, 999),
        ],
        pa.timestamp("us"),
    )
    res = run(spec, {"t": times, "id": ["a", "b", "c", "d", "e"]})
    assert [r["request"]["time"] for r in records(res)] == [
        "2024-01-01T00:00:00.999Z",
        "1969-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59.000Z",
        "1960-06-01T12:00:00.000Z",
        "0001-01-01T00:00:00.000Z",
    ]
    ns = pa.array([-1, -1_000_001], pa.timestamp("ns", tz="UTC"))
    assert epoch_text(ns) == ["1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.998Z"]
    assert res.min_time_us == -62_135_596_800_000_000 + 999


# =============================================================================================
# action JSON

FULL = {
    "action_name": {"column": "event"},
    "company_id": "customer_id",
    "user_id": "user_id",
    "subscription_id": "sub_id",
    "session_token": "token",
    "time": {"column": "created_at", "timezone": NY},
    "request": {
        "uri": {"value": "https://billing.example.com/payments"},
        "ip_address": "ip",
        "user_agent_string": "ua",
    },
    "metadata": {"amount": "amount", "currency": "currency", "pipeline": {"value": "backfill"}},
    "transaction_id": {"scope": SCOPE, "key": ["invoice_line_id"]},
}


def _full_batch(**override: Any) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "event": ["Paid"],
        "customer_id": ["acme"],
        "user_id": ["u1"],
        "sub_id": ["s1"],
        "token": ["tok"],
        "created_at": pa.array([dt.datetime(2024, 5, 1, 8, 0, 0, 123_999)], pa.timestamp("us")),
        "ip": ["10.0.0.1"],
        "ua": ["curl/8"],
        "amount": pa.array([D("12.50")], pa.decimal128(10, 2)),
        "currency": ["USD"],
        "invoice_line_id": ["inv-0001"],
    }
    cols.update(override)
    return cols


def test_exact_record_and_field_order() -> None:
    res = run(parse_mapping(FULL), _full_batch())
    [text] = res.records.to_pylist()
    assert text == (
        '{"action_name":"Paid","request":{"time":"2024-05-01T12:00:00.123Z",'
        '"uri":"https://billing.example.com/payments","ip_address":"10.0.0.1",'
        '"user_agent_string":"curl/8"},"company_id":"acme","user_id":"u1",'
        '"subscription_id":"s1","session_token":"tok",'
        f'"transaction_id":"{tid("inv-0001")}",'
        '"metadata":{"amount":12.50,"currency":"USD","pipeline":"backfill"}}'
    )
    assert list(json.loads(text)) == [
        "action_name",
        "request",
        "company_id",
        "user_id",
        "subscription_id",
        "session_token",
        "transaction_id",
        "metadata",
    ]
    assert res.accepted.tolist() == [0]
    assert res.epoch_us.to_pylist() == [1_714_564_800_123_999]


def test_nulls_are_omitted() -> None:
    spec = parse_mapping(FULL)
    cols = _full_batch()
    cols = {k: (v * 2 if isinstance(v, list) else v) for k, v in cols.items()}
    cols.update(
        customer_id=[None, "acme"],
        user_id=[None, None],
        sub_id=["s1", None],
        token=[None, "tok"],
        ip=[None, None],
        ua=["curl/8", None],
        created_at=pa.array([dt.datetime(2024, 5, 1)] * 2, pa.timestamp("us")),
        amount=pa.array([None, D("1.00")], pa.decimal128(10, 2)),
        currency=[None, None],
    )
    first, second = (r for r in res_records(spec, cols))
    assert first == {
        "action_name": "Paid",
        "request": {
            "time": "2024-05-01T04:00:00.000Z",
            "uri": "https://billing.example.com/payments",
            "user_agent_string": "curl/8",
        },
        "subscription_id": "s1",
        "transaction_id": tid("inv-0001"),
        "metadata": {"pipeline": "backfill"},
    }
    assert second["company_id"] == "acme"
    assert "user_id" not in second
    assert "subscription_id" not in second
    assert second["request"] == {
        "time": "2024-05-01T04:00:00.000Z",
        "uri": "https://billing.example.com/payments",
    }
    assert second["metadata"] == {"amount": 1.0, "pipeline": "backfill"}


def res_records(spec: MappingSpec, cols: dict[str, Any]) -> list[dict[str, Any]]:
    arrays = [v if isinstance(v, pa.Array) else pa.array(v) for v in cols.values()]
    res = build_actions(pa.RecordBatch.from_arrays(arrays, names=list(cols)), spec)
    assert res.rejected.tolist() == []
    texts = res.records.to_pylist()
    assert all("null" not in t for t in texts)
    return [json.loads(t) for t in texts]


def test_metadata_object_omitted_when_all_values_null() -> None:
    spec = spec_of(metadata={"a": "a", "b": "b"})
    res = run(spec, {"id": ["x", "y", "z"], "a": [None, 1, None], "b": [None, None, "B"]})
    texts = res.records.to_pylist()
    assert '"metadata"' not in texts[0]
    assert [r.get("metadata") for r in records(res)] == [None, {"a": 1}, {"b": "B"}]
    only_nulls = run(spec, {"id": ["x"], "a": pa.nulls(1), "b": pa.nulls(1, pa.string())})
    assert '"metadata"' not in only_nulls.records.to_pylist()[0]


def test_non_string_ids_go_through_canon() -> None:
    spec = spec_of(
        action_name={"column": "kind"},
        company_id="company",
        user_id="user",
        subscription_id="sub",
        session_token="tok",
        request={"ip_address": "ip", "uri": "uri"},
    )
    cols = {
        "id": ["a", "b", "c"],
        "kind": pa.array([7, 8, 9], pa.int16()),
        "company": pa.array([12345, -1, None], pa.int64()),
        "user": pa.array([1.0, 1.5, math.nan], pa.float64()),
        "sub": pa.array([D("12.3400"), D("-0.0000"), D("100.0000")], pa.decimal128(10, 4)),
        "tok": pa.array([True, False, None]),
        "ip": pa.array([dt.date(2024, 2, 29), None, None], pa.date32()),
        "uri": pa.array([dt.datetime(2024, 1, 1, 0, 0, 0, 5)] * 3, pa.timestamp("us", "UTC")),
    }
    recs = records(run(spec, cols))
    assert [r["action_name"] for r in recs] == ["7", "8", "9"]
    assert [r.get("company_id") for r in recs] == ["12345", "-1", None]
    assert [r.get("user_id") for r in recs] == ["1", "1.5", None]  # NaN counts as null
    assert [r.get("subscription_id") for r in recs] == ["12.34", "0", "100"]
    assert [r.get("session_token") for r in recs] == ["true", "false", None]
    assert [r["request"].get("ip_address") for r in recs] == ["2024-02-29", None, None]
    assert recs[0]["request"]["uri"] == "2024-01-01T00:00:00.000005Z"


def test_constants_go_through_canon() -> None:
    spec = spec_of(
        action_name={"value": 42},
        company_id={"value": 12345},
        user_id={"value": True},
        subscription_id={"value": 1.0},
        session_token={"value": 2.5},
        metadata={"n": {"value": 12345}, "flag": {"value": False}, "f": {"value": 1.5}},
    )
    [rec] = records(run(spec, {"id": ["a"]}))
    assert rec["action_name"] == "42"
    assert rec["company_id"] == "12345"
    assert rec["user_id"] == "true"
    assert rec["subscription_id"] == "1"
    assert rec["session_token"] == "2.5"
    assert rec["metadata"] == {"n": 12345, "flag": False, "f": 1.5}


NASTY = [
    'say "hi"',
    "back\\slash",
    "line\nbreak",
    "ctl\x01char",
    "tab\tand\rcr",
    "\x00nul",
    "é 日本 🙂",
    "",
    "</script>",
    "plain",
]


def test_strings_needing_escapes_round_trip() -> None:
    spec = spec_of(
        action_name={"column": "s"},
        company_id="s",
        request={"user_agent_string": "s"},
        metadata={"s": "s", 'key "q"\n': "s"},
    )
    res = run(spec, {"id": [str(i) for i in range(len(NASTY))], "s": NASTY})
    for text, original in zip(res.records.to_pylist(), NASTY, strict=True):
        rec = json.loads(text)
        assert rec["action_name"] == original
        assert rec["company_id"] == original
        assert rec["request"]["user_agent_string"] == original
        assert rec["metadata"] == {"s": original, 'key "q"\n': original}
        assert "\n" not in text
        assert "\x01" not in text


def test_string_keys_with_escapes_hash_the_raw_text() -> None:
    res = run(spec_of(), {"id": NASTY})
    assert [r["transaction_id"] for r in records(res)] == [tid(s) for s in NASTY]


def test_metadata_numbers_and_decimals_keep_digits() -> None:
    big = "1234567890123456789012345678.1234567890"
    assert len(big.replace(".", "")) == 38
    spec = spec_of(metadata={"amount": "amount", "big": "big", "i": "i", "f": "f", "b": "b"})
    cols = {
        "id": ["x", "y"],
        "amount": pa.array([D("12.3400"), D("-0.5000")], pa.decimal128(6, 4)),
        "big": pa.array([D(big), D("-" + big)], pa.decimal128(38, 10)),
        "i": pa.array([2**63 - 1, -(2**63)], pa.int64()),
        "f": pa.array([0.1, 1e16], pa.float64()),
        "b": [True, False],
    }
    res = run(spec, cols)
    first, second = res.records.to_pylist()
    assert '"amount":12.3400,' in first
    assert f'"big":{big},' in first
    assert f'"big":-{big},' in second
    assert '"amount":-0.5000,' in second
    exact = [json.loads(t, parse_float=D) for t in (first, second)]
    assert exact[0]["metadata"]["amount"] == D("12.3400")
    assert str(exact[0]["metadata"]["big"]) == big
    assert exact[1]["metadata"]["i"] == -(2**63)
    assert exact[0]["metadata"]["i"] == 2**63 - 1
    assert json.loads(first)["metadata"]["f"] == 0.1
    assert json.loads(second)["metadata"]["f"] == 1e16
    assert exact[0]["metadata"]["b"] is True


def test_metadata_decimal_with_negative_scale() -> None:
    arr = pa.array([D("1E+3"), None], pa.decimal128(5, -2))
    recs = records(run(spec_of(metadata={"d": "d"}), {"id": ["x", "y"], "d": arr}))
    assert recs[0]["metadata"] == {"d": 1000}
    assert "metadata" not in recs[1]


def test_nonfinite_metadata_omitted_and_counted() -> None:
    spec = spec_of(metadata={"f": "f", "g": "g"})
    cols = {
        "id": ["a", "b", "c", "d", "e"],
        "f": pa.array([1.5, math.nan, math.inf, -math.inf, None], pa.float64()),
        "g": pa.array([math.nan, 2.0, None, None, None], pa.float32()),
    }
    res = run(spec, cols)
    assert res.rejected.tolist() == []
    assert [r.get("metadata") for r in records(res)] == [{"f": 1.5}, {"g": 2.0}, None, None, None]
    assert res.counters["metadata_nonfinite_omitted"] == 4
    assert all("NaN" not in t and "Infinity" not in t for t in res.records.to_pylist())


def test_timestamps_in_metadata_match_request_time() -> None:
    spec = spec_of(
        time={"column": "t", "timezone": NY},
        metadata={"t": "t", "aware": "aware", "day": "day", "text": "t_text"},
    )
    naive = [dt.datetime(2024, 11, 3, 1, 30, 0, 456_789), dt.datetime(1969, 12, 31, 23, 59, 59, 1)]
    cols = {
        "t": pa.array(naive, pa.timestamp("us")),
        "id": ["a", "b"],
        "aware": pa.array(
            [1_730_611_800_456_789_000, 17_999_000_001_000], pa.timestamp("ns", "UTC")
        ),
        "day": pa.array([dt.date(2024, 11, 3), None], pa.date32()),
        "t_text": ["2024-11-03T01:30:00.456789", None],
    }
    recs = records(run(spec, cols))
    assert [r["request"]["time"] for r in recs] == [
        "2024-11-03T05:30:00.456Z",
        "1970-01-01T04:59:59.000Z",
    ]
    for rec in recs:
        assert rec["metadata"]["t"] == rec["request"]["time"]
        assert rec["metadata"]["aware"] == rec["request"]["time"]
    assert recs[0]["metadata"]["day"] == "2024-11-03"
    assert recs[0]["metadata"]["text"] == "2024-11-03T01:30:00.456789"  # strings stay strings


def test_nested_metadata() -> None:
    point = pa.struct([("x", pa.int64()), ("label", pa.string()), ("d", pa.decimal128(5, 2))])
    cols = {
        "id": ["a", "b", "c"],
        "tags": pa.array([["a", 'q"'], [], None], pa.list_(pa.string())),
        "point": pa.array(
            [{"x": 1, "label": "é", "d": D("1.50")}, {"x": None, "label": None, "d": None}, None],
            point,
        ),
        "lines": pa.array([[{"x": 1, "label": "l1", "d": D("0.10")}], [], None], pa.list_(point)),
        "attrs": pa.array(
            [[("k", 1.5)], [("n", math.nan)], None], pa.map_(pa.string(), pa.float64())
        ),
        "ts": pa.array(
            [[dt.datetime(2024, 1, 1, 0, 0, 0, 1500)], None, None], pa.list_(pa.timestamp("us"))
        ),
    }
    spec = spec_of(metadata={k: k for k in cols if k != "id"})
    texts = run(spec, cols).records.to_pylist()
    recs = [json.loads(t, parse_float=D) for t in texts]
    assert recs[0]["metadata"] == {
        "tags": ["a", 'q"'],
        "point": {"x": 1, "label": "é", "d": D("1.50")},
        "lines": [{"x": 1, "label": "l1", "d": D("0.10")}],
        "attrs": {"k": D("1.5")},
        "ts": ["2024-01-01T00:00:00.001Z"],
    }
    assert recs[1]["metadata"] == {
        "tags": [],
        "point": {"x": None, "label": None, "d": None},
        "lines": [],
        "attrs": {"n": None},
    }
    assert "metadata" not in recs[2]


def test_record_size_limit() -> None:
    spec = spec_of(metadata={"blob": "blob"})
    probe = run(spec, {"id": ["a"], "blob": ["é"]}).records.to_pylist()[0]
    overhead = len(probe.encode()) - len("é".encode())
    fill = MAX_ACTION_BYTES - overhead
    blobs = ["x" * fill, "x" * (fill + 1), "é" * (fill // 2), "é" * (fill // 2 + 1), "small"]
    res = run(spec, {"id": ["a", "b", "c", "d", "e"], "blob": blobs})
    assert res.accepted.tolist() == [0, 2, 4]
    assert res.rejected.tolist() == [1, 3]
    assert res.reasons == [R_TOO_LARGE, R_TOO_LARGE]
    assert R_TOO_LARGE == "action over 1,000,000 bytes"
    sizes = [len(t.encode()) for t in res.records.to_pylist()]
    assert sizes[0] == MAX_ACTION_BYTES
    assert sizes[1] <= MAX_ACTION_BYTES
    for text in res.records.to_pylist():
        json.loads(text)


def test_existing_uuid_column() -> None:
    spec = spec_of(transaction_id={"column": "uuid"})
    cols = {
        "uuid": [
            "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
            "not-a-uuid",
            None,
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "6ba7b8109dad11d180b400c04fd430c8",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c",
        ]
    }
    res = run(spec, cols)
    assert res.accepted.tolist() == [0, 3]
    assert res.rejected.tolist() == [1, 2, 4, 5]
    assert res.reasons == [R_BAD_UUID, R_KEY_MISSING, R_BAD_UUID, R_BAD_UUID]
    assert R_BAD_UUID == "invalid UUID in transaction_id column"
    assert [r["transaction_id"] for r in records(res)] == [str(uuid.NAMESPACE_DNS)] * 2


def test_existing_uuid_binary_column() -> None:
    spec = spec_of(transaction_id={"column": "uuid"})
    raw = pa.array([uuid.NAMESPACE_URL.bytes, None], pa.binary(16))
    res = run(spec, {"uuid": raw})
    assert res.rejected.tolist() == [1]
    assert res.reasons == [R_KEY_MISSING]
    assert records(res)[0]["transaction_id"] == str(uuid.NAMESPACE_URL)


def test_reject_reasons_and_positions() -> None:
    spec = spec_of(
        action_name={"column": "name"},
        transaction_id={"scope": SCOPE, "key": ["id", "part"]},
        metadata={"blob": "blob"},
    )
    huge = "x" * MAX_ACTION_BYTES
    rows = [
        # (id, part, name, time, blob)            expected reason
        ("a", 1.0, "Paid", T0, None),  # accepted
        (None, None, None, None, None),  # key missing (checked first)
        ("c", math.nan, None, "nope", None),  # non-finite key
        ("d", None, None, "nope", None),  # action_name missing (before the time checks)
        ("e", 2.0, "Paid", None, None),  # time missing
        ("f", 3.0, "Paid", "2024-02-30T00:00:00Z", None),  # unparseable time
        ("g", 4.0, "Paid", T0, huge),  # too large
        (None, 5.0, "Paid", T0, None),  # accepted: a null part, not an all-null key
        ("i", math.inf, "Paid", T0, huge),  # non-finite key wins over size
        ("j", None, "Paid", "2024-06-01 12:00:00", "ok"),  # accepted
    ]
    ids, parts, names, times, blobs = (list(c) for c in zip(*rows, strict=True))
    res = run(
        spec,
        {
            "t": pa.array(times, pa.string()),
            "id": pa.array(ids, pa.string()),
            "part": pa.array(parts, pa.float64()),
            "name": pa.array(names, pa.string()),
            "blob": pa.array(blobs, pa.string()),
        },
    )
    assert res.accepted.tolist() == [0, 7, 9]
    assert res.rejected.tolist() == [1, 2, 3, 4, 5, 6, 8]
    assert res.reasons == [
        R_KEY_MISSING,
        R_KEY_NONFINITE,
        R_NAME_MISSING,
        R_TIME_MISSING,
        R_TIME_BAD,
        R_TOO_LARGE,
        R_KEY_NONFINITE,
    ]
    assert (R_KEY_MISSING, R_NAME_MISSING, R_TIME_MISSING, R_TIME_BAD) == (
        "missing transaction_id key value",
        "missing action_name",
        "missing time",
        "unparseable time",
    )
    recs = records(res)
    assert [r["transaction_id"] for r in recs] == [tid("a", "1"), tid(None, "5"), tid("j", None)]
    assert [r["request"]["time"] for r in recs] == [
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T12:00:00.000Z",
        "2024-06-01T12:00:00.000Z",
    ]
    assert res.epoch_us.to_pylist() == [1_714_564_800_000_000] * 2 + [1_717_243_200_000_000]
    assert res.min_time_us == 1_714_564_800_000_000


def test_empty_batch() -> None:
    spec = spec_of(metadata={"a": "a"})
    batch = pa.RecordBatch.from_arrays([pa.array([], pa.string())] * 3, names=["t", "id", "a"])
    res = build_actions(batch, spec)
    assert len(res.records) == 0
    assert res.accepted.tolist() == []
    assert res.rejected.tolist() == []
    assert res.min_time_us is None


def test_dictionary_and_large_string_columns() -> None:
    spec = spec_of(company_id="c", metadata={"c": "c"})
    cols = {
        "id": pa.array(["x", "y", "x"]).dictionary_encode(),
        "c": pa.array(["acme", None, 'q"'], pa.large_string()).dictionary_encode(),
    }
    recs = records(run(spec, cols))
    assert [r["transaction_id"] for r in recs] == [tid("x"), tid("y"), tid("x")]
    assert [r.get("company_id") for r in recs] == ["acme", None, 'q"']
    assert [r.get("metadata") for r in recs] == [{"c": "acme"}, None, {"c": 'q"'}]


def test_many_rows_are_all_valid_json() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    amounts = [
        None if i % 17 == 0 else D(int(v)) / 100
        for i, v in enumerate(rng.integers(-(10**6), 10**6, n))
    ]
    spec = parse_mapping(FULL)
    cols = _full_batch(
        event=["Paid"] * n,
        customer_id=[None if i % 5 == 0 else f"c{i}" for i in range(n)],
        user_id=[f'u"{i}\\' for i in range(n)],
        sub_id=["s"] * n,
        token=[None] * n,
        created_at=pa.array(rng.integers(0, 2 * 10**15, n), pa.timestamp("us")),
        ip=["1.2.3.4"] * n,
        ua=["ua"] * n,
        amount=pa.array(amounts, pa.decimal128(12, 2)),
        currency=["USD", "EUR"] * (n // 2),
        invoice_line_id=[f"inv-{i:06d}" for i in range(n)],
    )
    res = run(spec, cols)
    assert res.rejected.tolist() == []
    recs = records(res)
    assert len({r["transaction_id"] for r in recs}) == n
    assert recs[123]["transaction_id"] == tid("inv-000123")
    assert "amount" not in recs[34]["metadata"]
    assert recs[35]["metadata"]["amount"] == float(amounts[35])
