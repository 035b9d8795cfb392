"""Property tests (hypothesis) for the promises that do not depend on Firehose.

* The ID canon: equal numbers give equal IDs whatever their column type (42 == 42.0 ==
  Decimal("42.000") == "42"), null differs from "", a value holding ``|`` or digits-colon
  cannot collide with another split of a composite key, and the declared key order matters.
  Expected IDs are computed here from the contract text (docs/transaction-id.md) with
  `uuid.uuid5`, never with the project's ID code; the IDs under test come from `build_actions`,
  the column-wise path every run uses. (That path equals the row-wise reference implementation
  for every type: tests/test_ids_golden.py::test_columnwise_equals_reference.)
* Every emitted action is valid JSON (no NaN/Infinity), at most 1,000,000 bytes, with the
  documented field order; the size limit is exact to the byte.
* ``rows_read == actions_sent + rows_rejected + rows_skipped`` for any mix of good and bad rows,
  through the whole pipeline (`run_plain`) in dry-run and validate mode.

The batch splitter's limits (never more than 500 records or 4 MiB per PutRecordBatch, order
kept, nothing lost or repeated) are properties in tests/test_firehose_sender.py
(test_plan_batches_respects_limits_keeps_order_and_loses_nothing,
test_split_batches_on_real_records) and are checked against the strict endpoint there
(test_batches_respect_500_records_and_4_mib); they are not repeated here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import itertools
import json
import math
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from pipeline.settings import RunSettings
from tests.runner import run_plain
from transforms.actions import (
    MAX_ACTION_BYTES,
    R_KEY_MISSING,
    R_NAME_MISSING,
    R_TIME_BAD,
    R_TIME_MISSING,
    R_TOO_LARGE,
    build_actions,
)
from transforms.mapping import MappingSpec, parse_mapping

D = decimal.Decimal
SCOPE = "billing.properties"
NS = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + SCOPE)
T0 = "2024-05-01T12:00:00Z"
TWO_53 = 2**53
WIDE = decimal.Context(prec=76)  # room for 38 digits (the default context keeps 28)


def contract_id(texts: tuple[str | None, ...]) -> str:
    """transaction_id per ID contract v1, from the canon() texts of the key (None = null)."""
    return str(uuid.uuid5(NS, contract_name(texts)))


def contract_name(texts: tuple[str | None, ...]) -> str:
    return "v1" + "".join("|~" if t is None else f"|{len(t.encode())}:{t}" for t in texts)


def key_spec(columns: list[str]) -> MappingSpec:
    return parse_mapping(
        {
            "action_name": {"value": "Paid"},
            "time": "t",
            "transaction_id": {"scope": SCOPE, "key": columns},
        }
    )


def ids_via_pipeline(columns: dict[str, pa.Array], key: list[str]) -> list[str | None]:
    """transaction_id of every row as build_actions makes it (None for a rejected row)."""
    n = len(next(iter(columns.values())))
    batch = pa.RecordBatch.from_pydict({"t": pa.array([T0] * n), **columns})
    res = build_actions(batch, key_spec(key))
    out: list[str | None] = [None] * n
    for pos, record in zip(res.accepted.tolist(), res.records.to_pylist(), strict=True):
        out[pos] = json.loads(record)["transaction_id"]
    return out


# ---------------------------------------------------------------------------------------------
# canon: equal numbers, equal IDs


@settings(max_examples=150, deadline=None)
@given(st.integers(-(TWO_53 - 1), TWO_53 - 1), st.integers(0, 18))
@example(42, 3)  # 42 == 42.0 == Decimal("42.000") == "42"
@example(0, 3)
def test_equal_integers_give_one_id_in_every_column_type(n: int, scale: int) -> None:
    quantum = D(1).scaleb(-scale)
    columns = {
        "i64": pa.array([n], pa.int64()),
        "f64": pa.array([float(n)], pa.float64()),
        "dec": pa.array([WIDE.quantize(D(n), quantum)], pa.decimal128(38, scale)),
        "txt": pa.array([str(n)], pa.string()),  # CSV keys are read as text
    }
    if -(2**31) <= n < 2**31:
        columns["i32"] = pa.array([n], pa.int32())
    if n >= 0:
        columns["u64"] = pa.array([n], pa.uint64())
    if abs(n) <= 2**24:
        columns["f32"] = pa.array([float(n)], pa.float32())
    if n == 0:  # the sign of zero does not matter either
        columns["negzero_f"] = pa.array([-0.0], pa.float64())
        columns["negzero_d"] = pa.array([WIDE.quantize(D("-0"), quantum)], pa.decimal128(38, scale))
    want = contract_id((str(n),))
    for name, column in columns.items():
        assert ids_via_pipeline({name: column}, [name]) == [want], (name, column)


def _plain_float_text(d: decimal.Decimal) -> bool:
    text = repr(float(d))
    return "e" not in text and D(text) == d and not float(d).is_integer()


@settings(max_examples=150, deadline=None)
@given(
    st.decimals(
        min_value=-(10**12), max_value=10**12, places=6, allow_nan=False, allow_infinity=False
    ).filter(_plain_float_text),
    st.integers(0, 12),
)
@example(D("42.5"), 3)
@example(D("-0.125"), 0)
def test_equal_fractions_give_one_id_as_float_and_decimal(d: decimal.Decimal, extra: int) -> None:
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    scale = -exponent + extra  # trailing zeros: 42.5 == 42.500
    columns = {
        "f64": pa.array([float(d)], pa.float64()),
        "dec": pa.array([WIDE.quantize(d, D(1).scaleb(-scale))], pa.decimal128(38, scale)),
        "txt": pa.array([repr(float(d))], pa.string()),
    }
    want = contract_id((repr(float(d)),))
    for name, column in columns.items():
        assert ids_via_pipeline({name: column}, [name]) == [want], name


# ---------------------------------------------------------------------------------------------
# composite keys: null vs "", separators inside values, other splits

HOSTILE = st.text(alphabet="ab|:~0123456789", max_size=8)
PART = st.none() | HOSTILE


def resplit(parts: tuple[str | None, ...], cuts: list[int]) -> tuple[str, ...]:
    """The same characters, split elsewhere: what a naive encoding could not tell apart."""
    joined = "|".join("" if p is None else p for p in parts)
    bounds = [0, *sorted({min(c, len(joined)) for c in cuts}), len(joined)]
    return tuple(joined[a:b] for a, b in itertools.pairwise(bounds))


@st.composite
def key_pairs(draw: st.DrawFn) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
    first = tuple(draw(st.lists(PART, min_size=1, max_size=3)))
    how = draw(st.sampled_from(["independent", "null-vs-empty", "resplit"]))
    if how == "independent":
        second = tuple(draw(st.lists(PART, min_size=1, max_size=3)))
    elif how == "null-vs-empty":
        i = draw(st.integers(0, len(first) - 1))
        swapped = "" if first[i] is None else None if first[i] == "" else first[i]
        second = (*first[:i], swapped, *first[i + 1 :])
    else:
        second = resplit(first, draw(st.lists(st.integers(0, 30), max_size=3)))
    return first, second


def _one_row_id(parts: tuple[str | None, ...]) -> str | None:
    cols = {f"k{i}": pa.array([p], pa.string()) for i, p in enumerate(parts)}
    return ids_via_pipeline(cols, list(cols))[0]


@settings(max_examples=300, deadline=None)
@given(key_pairs())
@example((("a|1:b",), ("a", "b")))
@example((("a", "b"), ("a|1:b",)))
@example(((None,), ("",)))
@example((("", None), (None, "")))
@example((("3:abc",), ("", "abc")))
@example((("|~",), (None,)))
@example((("a", "|~"), ("a", None)))
def test_different_keys_never_share_an_id(
    pair: tuple[tuple[str | None, ...], tuple[str | None, ...]],
) -> None:
    first, second = pair
    # the contract's names are an injective encoding of the key tuple ...
    assert (contract_name(first) == contract_name(second)) == (first == second)
    # ... and the pipeline hashes exactly those names (an all-null key is rejected instead)
    for parts in (first, second):
        got = _one_row_id(parts)
        if all(p is None for p in parts):
            assert got is None
        else:
            assert got == contract_id(parts)
    if first != second and not all(p is None for p in first):
        assert _one_row_id(first) != _one_row_id(second)


@settings(max_examples=150, deadline=None)
@given(PART, PART)
@example("a", "b")
@example(None, "")
@example("1", None)
def test_declared_key_order_matters(a: str | None, b: str | None) -> None:
    assume(a is not None or b is not None)  # an all-null key is rejected, not hashed
    cols = {"a": pa.array([a], pa.string()), "b": pa.array([b], pa.string())}
    [ab] = ids_via_pipeline(cols, ["a", "b"])
    [ba] = ids_via_pipeline(cols, ["b", "a"])
    assert ab == contract_id((a, b)) and ba == contract_id((b, a))
    assert (ab == ba) == (a == b)


# ---------------------------------------------------------------------------------------------
# every action: valid JSON, within the size limit, fields in the documented order

FULL_MAPPING: dict[str, Any] = {
    "action_name": "event",
    "time": {"column": "t", "timezone": "Europe/Berlin"},
    "company_id": "company",
    "user_id": "user",
    "subscription_id": "sub",
    "session_token": "token",
    "request": {"uri": {"value": "https://billing.example.com/p"}, "ip_address": "ip"},
    "metadata": {
        "amount": "amount",
        "price": "price",
        "note": "note",
        "at": "at",
        "tags": "tags",
        "detail": "detail",
        "pipeline": {"value": "backfill"},
    },
    "transaction_id": {"scope": SCOPE, "key": ["id", "line"]},
}
TOP_ORDER = [
    "action_name",
    "request",
    "company_id",
    "user_id",
    "subscription_id",
    "session_token",
    "transaction_id",
    "metadata",
]
REQUEST_ORDER = ["time", "uri", "ip_address"]
METADATA_ORDER = ["amount", "price", "note", "at", "tags", "detail", "pipeline"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

TEXT = st.text(max_size=12)  # any Unicode scalar: quotes, backslashes, controls, U+2028 ...
GOOD_TIMES = st.datetimes(
    min_value=dt.datetime(1971, 1, 1),
    max_value=dt.datetime(2099, 12, 31),
    timezones=st.just(dt.UTC),
)
TIMES = st.one_of(
    GOOD_TIMES.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    GOOD_TIMES.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.none(),
    st.sampled_from(["", "not-a-time", "2024-13-01T00:00:00Z", "2024-02-30", "2024-05-01T25:00Z"]),
)
DEC = pa.decimal128(38, 18)
DECIMALS = st.one_of(
    st.none(),
    st.decimals(min_value=-(10**19), max_value=10**19, places=18, allow_nan=False),
    st.sampled_from([D("99999999999999999999.999999999999999999"), D("1E-18"), D("-0E-18")]),
)


@st.composite
def action_rows(draw: st.DrawFn) -> dict[str, pa.Array]:
    n = draw(st.integers(1, 8))

    def col(strategy: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(strategy, min_size=n, max_size=n))

    return {
        "id": pa.array(col(st.none() | TEXT), pa.string()),
        "line": pa.array(col(st.none() | st.integers(-(2**63), 2**63 - 1)), pa.int64()),
        "event": pa.array(col(st.sampled_from(["Paid", "Refund"]) | TEXT | st.none())),
        "t": pa.array(col(TIMES), pa.string()),
        "company": pa.array(col(st.none() | st.integers(0, 10**6)), pa.int64()),
        "user": pa.array(col(st.none() | TEXT), pa.string()),
        "sub": pa.array(col(st.none() | st.floats()), pa.float64()),  # NaN/Inf count as null
        "token": pa.array(col(st.none() | st.booleans()), pa.bool_()),
        "ip": pa.array(col(st.none() | TEXT), pa.string()),
        "amount": pa.array(col(st.none() | st.floats()), pa.float64()),  # NaN/Inf omitted
        "price": pa.array(col(DECIMALS), DEC),
        "note": pa.array(col(st.none() | TEXT), pa.string()),
        "at": pa.array(col(st.none() | st.datetimes()), pa.timestamp("us")),  # naive, Berlin
        "tags": pa.array(
            col(st.none() | st.lists(st.none() | TEXT, max_size=3)), pa.list_(pa.string())
        ),
        "detail": pa.array(
            col(
                st.none()
                | st.fixed_dictionaries({"a": st.none() | TEXT, "b": st.none() | st.floats()})
            ),
            pa.struct([("a", pa.string()), ("b", pa.float64())]),
        ),
    }


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in an action")  # JSON has no NaN or Infinity


def _subsequence(keys: list[str], order: list[str]) -> bool:
    positions = [order.index(k) for k in keys]
    return positions == sorted(positions) and len(set(positions)) == len(positions)


def _first_reason(columns: dict[str, pa.Array], i: int) -> str | None:
    """The reject reason the documented order gives (before the size check)."""
    if columns["id"][i].as_py() is None and columns["line"][i].as_py() is None:
        return R_KEY_MISSING
    if columns["event"][i].as_py() is None:
        return R_NAME_MISSING
    t = columns["t"][i].as_py()
    if t is None:
        return R_TIME_MISSING
    try:
        dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return R_TIME_BAD
    return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action_rows())
def test_every_action_is_valid_json_within_limit_in_documented_order(
    columns: dict[str, pa.Array],
) -> None:
    spec = parse_mapping(FULL_MAPPING)
    n = len(columns["id"])
    res = build_actions(pa.RecordBatch.from_pydict(columns), spec)
    assert len(res.accepted) + len(res.rejected) == n == len(res.records) + len(res.reasons)
    event("some rows accepted" if len(res.accepted) else "every row rejected")
    for reason in set(res.reasons):
        event(f"rejected: {reason}")
    for pos, reason in zip(res.rejected.tolist(), res.reasons, strict=True):
        assert reason == _first_reason(columns, pos)
    for pos, text in zip(res.accepted.tolist(), res.records.to_pylist(), strict=True):
        assert _first_reason(columns, pos) is None
        raw = text.encode("utf-8")
        assert len(raw) <= MAX_ACTION_BYTES
        action = json.loads(raw, parse_constant=_no_constants)
        assert isinstance(action, dict)
        keys = list(action)
        assert keys[:2] == ["action_name", "request"] and "transaction_id" in keys
        assert _subsequence(keys, TOP_ORDER), keys
        assert next(iter(action["request"])) == "time"
        assert _subsequence(list(action["request"]), REQUEST_ORDER)
        assert TIME_RE.match(action["request"]["time"])
        given_time = dt.datetime.strptime(columns["t"][pos].as_py(), "%Y-%m-%dT%H:%M:%S.%fZ")
        assert action["request"]["time"] == given_time.strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{given_time.microsecond // 1000:03d}Z"
        )
        if "metadata" in action:
            assert _subsequence(list(action["metadata"]), METADATA_ORDER)
            assert action["metadata"]["pipeline"] == "backfill"
        key_id, key_line = columns["id"][pos].as_py(), columns["line"][pos].as_py()
        want = contract_id((key_id, None if key_line is None else str(key_line)))
        assert action["transaction_id"] == want
        for field, column in (("user_id", "user"), ("session_token", "token")):
            value = columns[column][pos].as_py()
            if value is None:
                assert field not in action
            else:
                assert action[field] == (value if isinstance(value, str) else str(value).lower())
        sub = columns["sub"][pos].as_py()
        if sub is None or not math.isfinite(sub):
            assert "subscription_id" not in action


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["x", "é", '"', "\n", "\u2028", "😀"]),
    st.integers(-4, 4),
    st.data(),
)
def test_size_limit_is_exact_to_the_byte(char: str, delta: int, data: st.DataObject) -> None:
    """A record of exactly 1,000,000 bytes is sent; one byte more is rejected."""
    spec = parse_mapping(
        {
            "action_name": {"value": "Paid"},
            "time": "t",
            "metadata": {"pad": "pad"},
            "transaction_id": {"scope": SCOPE, "key": ["id"]},
        }
    )
    row_id = data.draw(TEXT.filter(bool), label="id")

    def record_bytes(pad: str) -> tuple[int, str | None]:
        batch = pa.RecordBatch.from_pydict({"t": [T0], "id": [row_id], "pad": [pad]})
        res = build_actions(batch, spec)
        if len(res.records):
            return len(res.records[0].as_py().encode()), None
        return -1, res.reasons[0]

    base, _ = record_bytes("")
    unit = len(json.dumps(char, ensure_ascii=False).encode()) - 2  # escaped size of one char
    count = (MAX_ACTION_BYTES - base) // unit + delta
    size = base + count * unit
    got, reason = record_bytes(char * count)
    if size <= MAX_ACTION_BYTES:
        assert (got, reason) == (size, None)
    else:
        assert (got, reason) == (-1, R_TOO_LARGE)


# ---------------------------------------------------------------------------------------------
# accounting through the whole pipeline

ACCOUNTING_MAPPING = {
    "action_name": {"value": "Processed Payment Transaction"},
    "time": {"column": "created_at", "timezone": "UTC"},
    "company_id": "customer_id",
    "metadata": {"amount": "amount"},
    "transaction_id": {"scope": SCOPE, "key": ["invoice_line_id"]},
}
ROW_KINDS = ["good", "good", "good", "no-key", "no-time", "bad-time"]


def _row(kind: str, i: int, now: dt.datetime) -> dict[str, Any]:
    created: str | None = (now - dt.timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    key: str | None = f"il_{i:06d}"
    if kind == "no-key":
        key = None
    elif kind == "no-time":
        created = None
    elif kind == "bad-time":
        created = f"not-a-time-{i}"
    return {
        "invoice_line_id": key,
        "customer_id": f"c{i % 7}",
        "created_at": created,
        "amount": i / 4,
    }


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("invoice_line_id", pa.string()),
                ("customer_id", pa.string()),
                ("created_at", pa.string()),
                ("amount", pa.float64()),
            ]
        ),
    )
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=max(1, len(rows) // 3 or 1))
        return
    lines = ["invoice_line_id,customer_id,created_at,amount"]
    for r in rows:  # an empty unquoted field is null
        lines.append(",".join("" if r[k] is None else str(r[k]) for k in r))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([".csv", ".parquet"]), st.lists(st.sampled_from(ROW_KINDS), max_size=40)
        ),
        min_size=1,
        max_size=3,
    ),
    st.integers(1, 9),
    st.sampled_from(["dry-run", "validate"]),
)
def test_every_row_is_accounted_for(
    files: list[tuple[str, list[str]]], chunk_rows: int, mode: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        counter = 0
        good = bad = 0
        for index, (suffix, kinds) in enumerate(files):
            rows = []
            for kind in kinds:
                counter += 1
                rows.append(_row(kind, counter, now))
                good, bad = (good + 1, bad) if kind == "good" else (good, bad + 1)
            _write(root / "data" / f"f{index}{suffix}", rows)
        mapping = root / "mapping.json"
        mapping.write_text(json.dumps(ACCOUNTING_MAPPING))  # JSON is YAML
        settings_ = RunSettings.model_validate(
            {
                "sources": [str(root / "data")],
                "mapping": mapping,
                "mode": mode,
                "out": root / "out" if mode == "dry-run" else None,
                "checkpoint": root / "ckpt",
                "job": "prop",
                "chunk_rows": chunk_rows,
            }
        )
        summary, err = run_plain(settings_)
        assert err is None, err
        assert (
            summary.rows_read == summary.actions_sent + summary.rows_rejected + summary.rows_skipped
        )
        assert summary.accounted
        assert (summary.rows_read, summary.actions_sent, summary.rows_rejected) == (
            good + bad,
            good,
            bad,
        )
        assert summary.rows_skipped == 0
        assert summary.status == ("complete_with_rejects" if bad else "complete")
        if mode == "dry-run":
            written = [
                line
                for f in sorted((root / "out").glob("*.ndjson.gz"))
                for line in gzip.decompress(f.read_bytes()).decode().splitlines()
            ]
            assert len(written) == good
            rejects = root / "out" / "rejects.ndjson"
            assert (len(rejects.read_text().splitlines()) if rejects.exists() else 0) == bad
