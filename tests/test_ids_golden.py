"""ID contract v1 golden vectors (tests/golden/transaction_ids.json) and properties.

The golden IDs were computed with `uuid.uuid5` alone from the contract text in
docs/transaction-id.md, never with this project's code: if a refactor changes an ID, these
tests fail. Both implementations are checked: the pure-Python reference
(`transaction_id_value`) and the column-wise hot path (`canon_array` -> `id_names` ->
`uuid5_array`) on a one-row Arrow array of the value's natural type.

A case with `reject` instead of `name`/`transaction_id` is a value without canon text (a naive
time inside a DST gap): both implementations refuse it, and `build_actions` rejects the row with
exactly that reason.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import math
import re
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from transforms.actions import R_KEY_MISSING, R_KEY_NONFINITE, build_actions
from transforms.canon import (
    NoCanonicalText,
    NonexistentLocalTime,
    NonFinite,
    canon_array,
    canon_value,
    nonexistent_times,
)
from transforms.ids import id_names, transaction_id_value, uuid5_array
from transforms.mapping import parse_mapping
from transforms.time_format import format_epoch
from transforms.times import to_epoch_us

GOLDEN = Path(__file__).parent / "golden" / "transaction_ids.json"
with GOLDEN.open(encoding="utf-8") as fh:
    CASES: list[dict[str, Any]] = json.load(fh)["cases"]
ID_CASES = [c for c in CASES if "reject" not in c]
REJECT_CASES = [c for c in CASES if "reject" in c]

_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<off>Z|[+-]\d{2}:\d{2})?$"
)


# ---------------------------------------------------------------------------------------------
# decoding the typed values of the JSON file


def _timestamp_parts(text: str) -> tuple[int, str | None, bool]:
    """ISO text -> (wall-clock ns since the epoch, offset or None, has sub-microsecond digits)."""
    m = _ISO.match(text)
    assert m, text
    frac = (m["frac"] or "").ljust(9, "0")
    wall = np.datetime64(f"{m['date']}T{m['time']}", "ns").astype(np.int64) + int(frac)
    off = m["off"]
    if off and off != "Z":
        sign = 1 if off[0] == "+" else -1
        wall -= sign * (int(off[1:3]) * 3600 + int(off[4:6]) * 60) * 1_000_000_000
    return int(wall), off, len(m["frac"] or "") > 6


SIMPLE_TYPES = {"string": pa.string(), "float": pa.float64(), "bool": pa.bool_()}


def arrow_array(item: dict[str, Any]) -> pa.Array:
    """A one-row Arrow array of the type a Parquet file would give this value."""
    kind, value = item["type"], item["value"]
    if kind in SIMPLE_TYPES:
        return pa.array([value], SIMPLE_TYPES[kind])
    if kind == "int":
        return pa.array([value], pa.uint64() if value > 2**63 - 1 else pa.int64())
    if kind == "decimal":
        return pa.array([decimal.Decimal(value)])  # the narrowest decimal type that fits
    if kind in ("timestamp", "timestamp_naive"):
        ns, off, sub_us = _timestamp_parts(value)
        tz = None if off is None else ("UTC" if off == "Z" else off)
        unit, raw = ("ns", ns) if sub_us else ("us", ns // 1000)
        return pa.array([raw], pa.timestamp(unit, tz=tz))
    if kind == "date":
        return pa.array([dt.date.fromisoformat(value)], pa.date32())
    assert kind == "null", kind
    return pa.nulls(1, pa.string())


def python_value(item: dict[str, Any]) -> object:
    """The same value as a plain Python object for the reference implementation."""
    kind, value = item["type"], item["value"]
    if kind == "float":
        return float(value)
    if kind == "decimal":
        return decimal.Decimal(value)
    if kind in ("timestamp", "timestamp_naive"):
        if _timestamp_parts(value)[2]:  # nanoseconds: what Arrow hands to Python code
            return arrow_array(item).to_pylist()[0]
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind == "date":
        return dt.date.fromisoformat(value)
    return value


def namespace_of(case: dict[str, Any]) -> uuid.UUID:
    if "namespace" in case:
        return uuid.UUID(case["namespace"])
    return uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + case["scope"])


def columnwise_ids(ns: uuid.UUID, columns: list[pa.Array], tz: str) -> list[str]:
    texts = [canon_array(col, tz=tz)[0] for col in columns]
    return uuid5_array(ns, id_names(texts)).to_pylist()


# ---------------------------------------------------------------------------------------------
# golden vectors


def test_golden_file_shape() -> None:
    assert len(ID_CASES) >= 30
    assert len({c["id"] for c in CASES}) == len(CASES)
    for case in CASES:  # an ID case or a rejection case, never both
        assert ("reject" in case) != ({"name", "transaction_id"} <= set(case)), case["id"]
    assert [c["id"] for c in REJECT_CASES] == ["timestamp-naive-dst-gap"]
    types = {item["type"] for c in CASES for item in c["key"]}
    assert types == {
        "string",
        "int",
        "float",
        "bool",
        "decimal",
        "timestamp",
        "timestamp_naive",
        "date",
        "null",
    }


@pytest.mark.parametrize("case", ID_CASES, ids=[c["id"] for c in ID_CASES])
def test_golden_vector_is_plain_uuid5(case: dict[str, Any]) -> None:
    """The file is self-consistent: anyone can recompute the ID from the name with uuid5."""
    assert str(uuid.uuid5(namespace_of(case), case["name"])) == case["transaction_id"]


def test_published_table_matches_golden_file() -> None:
    """docs/transaction-id.md shows every golden vector (names with `|` escaped for Markdown)."""
    doc = (Path(__file__).parent.parent / "docs" / "transaction-id.md").read_text(encoding="utf-8")
    for case in ID_CASES:
        name = case["name"].replace("|", "\\|")
        row = f"`{name}` | `{case['transaction_id']}` |"
        assert row in doc, case["id"]
    for case in REJECT_CASES:
        assert f'| rejected: "{case["reject"]}" |' in doc, case["id"]
    assert doc.count("| `billing.payments` |") + doc.count("| `billing.usage` |") >= 30


@pytest.mark.parametrize("case", ID_CASES, ids=[c["id"] for c in ID_CASES])
def test_golden_reference(case: dict[str, Any]) -> None:
    values = [python_value(item) for item in case["key"]]
    got = transaction_id_value(namespace_of(case), values, tz=case["tz"])
    assert got == case["transaction_id"]


@pytest.mark.parametrize("case", ID_CASES, ids=[c["id"] for c in ID_CASES])
def test_golden_columnwise(case: dict[str, Any]) -> None:
    columns = [arrow_array(item) for item in case["key"]]
    texts = [canon_array(col, tz=case["tz"])[0] for col in columns]
    assert id_names(texts).to_pylist() == [case["name"]]
    assert columnwise_ids(namespace_of(case), columns, case["tz"]) == [case["transaction_id"]]


@pytest.mark.parametrize("case", REJECT_CASES, ids=[c["id"] for c in REJECT_CASES])
def test_golden_rejection_reference(case: dict[str, Any]) -> None:
    values = [python_value(item) for item in case["key"]]
    with pytest.raises(NonexistentLocalTime) as err:
        transaction_id_value(namespace_of(case), values, tz=case["tz"])
    assert str(err.value) == case["reject"]


@pytest.mark.parametrize("case", REJECT_CASES, ids=[c["id"] for c in REJECT_CASES])
def test_golden_rejection_columnwise(case: dict[str, Any]) -> None:
    """No canon text column-wise either, and `build_actions` rejects the row with the reason
    (the row stands between two rows that are accepted)."""
    columns = [arrow_array(item) for item in case["key"]]
    for col in columns:
        text, flagged = canon_array(col, tz=case["tz"])
        assert text.to_pylist() == [None] and flagged.tolist() == [True]
        rows, reasons = nonexistent_times(col, flagged, tz=case["tz"])
        assert rows.tolist() == [0] and reasons == [case["reject"]]
    names = [f"k{i}" for i in range(len(columns))]
    spec = parse_mapping(
        {
            "action_name": {"value": "Paid"},
            "time": {"column": "t", "timezone": case["tz"]},
            "transaction_id": {"scope": case["scope"], "key": names},
        }
    )
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["2024-01-01T00:00:00Z"] * 3), *(_around(col) for col in columns)],
        names=["t", *names],
    )
    res = build_actions(batch, spec)
    assert res.rejected.tolist() == [1]
    assert res.reasons == [case["reject"]]
    assert res.accepted.tolist() == [0, 2]


def _around(col: pa.Array) -> pa.Array:
    """`col`'s one value between two values of its type that have canon text (its epoch)."""
    return pa.concat_arrays([pa.array([0], col.type), col, pa.array([0], col.type)])


WIDER_TYPES = {
    "string": [pa.large_string(), pa.dictionary(pa.int32(), pa.string())],
    "int": [pa.int32(), pa.decimal128(38, 0)],
    "decimal": [pa.decimal128(38, 18), pa.decimal256(60, 30)],
    "float": [pa.float32()],
}


def _wider(item: dict[str, Any]) -> list[pa.Array]:
    base = arrow_array(item)
    out = []
    for t in WIDER_TYPES.get(item["type"], []):
        if item["type"] == "float" and float(np.float32(item["value"])) != item["value"]:
            continue  # not exactly representable in float32
        if t == pa.int32() and not -(2**31) <= item["value"] < 2**31:
            continue
        out.append(base.cast(t))
    return out


@pytest.mark.parametrize(
    "case",
    [c for c in ID_CASES if len(c["key"]) == 1 and _wider(c["key"][0])],
    ids=lambda c: c["id"],
)
def test_golden_columnwise_other_physical_types(case: dict[str, Any]) -> None:
    """The same value in another physical type (float32, int32, decimal with a larger scale,
    large/dictionary strings) has the same canonical text, hence the same ID."""
    for arr in _wider(case["key"][0]):
        got = columnwise_ids(namespace_of(case), [arr], case["tz"])
        assert got == [case["transaction_id"]], arr.type


def test_golden_ids_in_one_batch() -> None:
    """Many rows of one column at once (behind a null row) give the same IDs as one by one."""
    groups: dict[tuple[str, str], list[tuple[pa.Array, str]]] = {}
    for case in ID_CASES:
        if case.get("scope") == "billing.payments" and len(case["key"]) == 1:
            arr = arrow_array(case["key"][0])
            groups.setdefault((str(arr.type), case["tz"]), []).append((arr, case["transaction_id"]))
    assert len(groups) >= 8
    for (typ, tz), items in groups.items():
        column = pa.concat_arrays([pa.nulls(1, items[0][0].type), *(a for a, _ in items)])
        got = columnwise_ids(NS, [column], tz)
        assert got == [str(uuid.uuid5(NS, "v1|~")), *(i for _, i in items)], typ


# ---------------------------------------------------------------------------------------------
# properties: the column-wise path equals the reference, row by row

NS = uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:billing.payments")
ZONES = st.sampled_from(["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata"])
NAIVE = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 12, 31))
AWARE = st.datetimes(
    min_value=dt.datetime(1900, 1, 2),
    max_value=dt.datetime(2100, 12, 30),
    timezones=st.sampled_from(
        [
            dt.UTC,
            dt.timezone(dt.timedelta(hours=5, minutes=30)),
            dt.timezone(-dt.timedelta(hours=8)),
        ]
    ),
)
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, places=8).filter(
    lambda d: abs(d) < 10**29
)


COLUMN_TYPES = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "decimal": pa.decimal128(38, 8),
    "naive": pa.timestamp("us"),
    "aware": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "bool": pa.bool_(),
}


KINDS: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(),
    "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "decimal": DECIMALS,
    "naive": NAIVE,
    "aware": AWARE,
    "date": st.dates(),
    "bool": st.booleans(),
}


@st.composite
def key_columns(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    n = draw(st.integers(min_value=1, max_value=12))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3))
    cols = [draw(st.lists(st.none() | KINDS[k], min_size=n, max_size=n)) for k in kinds]
    return kinds, cols


def columnwise_ids_or_none(ns: uuid.UUID, columns: list[pa.Array], tz: str) -> list[str | None]:
    """The IDs column-wise; None for a row with a key value that has no canon text."""
    flagged = np.zeros(len(columns[0]), dtype=bool)
    texts = []
    for col in columns:
        text, bad = canon_array(col, tz=tz)
        texts.append(text)
        flagged |= bad
    ids = uuid5_array(ns, id_names(texts)).to_pylist()
    return [None if f else i for i, f in zip(ids, flagged.tolist(), strict=True)]


def reference_id_or_none(ns: uuid.UUID, row: list[Any], tz: str) -> str | None:
    try:
        return transaction_id_value(ns, row, tz=tz)
    except NoCanonicalText:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key_columns(), ZONES)
@example(  # inside New York's DST gap: no canon text either way
    (["naive", "str"], [[dt.datetime(2024, 3, 10, 2, 30), dt.datetime(2024, 3, 10, 3)], ["a"] * 2]),
    "America/New_York",
)
def test_columnwise_equals_reference(data: tuple[list[str], list[list[Any]]], tz: str) -> None:
    kinds, cols = data
    arrays = [pa.array(vals, COLUMN_TYPES[k]) for k, vals in zip(kinds, cols, strict=True)]
    got = columnwise_ids_or_none(NS, arrays, tz)
    # The reference gets the source values themselves, not Arrow's copies.
    rows = list(zip(*cols, strict=True))
    assert got == [reference_id_or_none(NS, list(row), tz) for row in rows]


# ---------------------------------------------------------------------------------------------
# naive times next to a change of UTC offset (DST or a zone's change of standard time)

DST_ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Europe/Dublin",  # negative DST in the tz database: "winter time" is the saving
    "Australia/Lord_Howe",  # a 30-minute change
    "America/Sao_Paulo",  # the change used to happen at midnight
    "Asia/Beirut",  # also at midnight
    "Pacific/Apia",  # skipped 2011-12-30 altogether
]


@functools.cache
def offset_changes(zone: str, year: int) -> list[dt.datetime]:
    """The wall-clock times, on the old offset, at which `zone` changed its UTC offset in
    `year` (found with zoneinfo alone)."""
    z = zoneinfo.ZoneInfo(zone)
    step = dt.timedelta(hours=6)
    t = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    out = []
    while t.year == year:
        if t.astimezone(z).utcoffset() != (t + step).astimezone(z).utcoffset():
            lo, hi = t, t + step
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                same = mid.astimezone(z).utcoffset() == lo.astimezone(z).utcoffset()
                lo, hi = (mid, hi) if same else (lo, mid)
            old = lo.astimezone(z).utcoffset()
            assert old is not None
            out.append((hi + old).replace(tzinfo=None))
        t += step
    return out


@st.composite
def near_offset_changes(draw: st.DrawFn) -> tuple[str, list[dt.datetime]]:
    year = draw(st.integers(1950, 2060))
    zone = draw(st.sampled_from([z for z in DST_ZONES if offset_changes(z, year)]))
    changes = offset_changes(zone, year)
    near = st.builds(
        lambda c, minutes, us: c + dt.timedelta(minutes=minutes, microseconds=us),
        st.sampled_from(changes),
        st.integers(-150, 150),
        st.sampled_from([0, 0, -1, 1]),
    )
    return zone, draw(st.lists(near, min_size=1, max_size=8))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_offset_changes())
@example(("America/New_York", [dt.datetime(2026, 3, 8, 2, 20), dt.datetime(2026, 11, 1, 1, 30)]))
@example(("Pacific/Apia", [dt.datetime(2011, 12, 30, 12), dt.datetime(2011, 12, 31, 0)]))
def test_naive_times_at_offset_changes(data: tuple[str, list[dt.datetime]]) -> None:
    """Next to an offset change: a key time inside a gap has no canon text (reference and
    column-wise, same reason); every time, in the time field, is the PEP 495 fold=0 instant
    (ambiguous: the earlier one; in a gap: the offset in force before it), whether it comes as
    a Parquet timestamp, naive ISO text, or text mixed with an offset (the per-value path)."""
    tz, walls = data
    zone = zoneinfo.ZoneInfo(tz)
    col = pa.array([*walls, None], pa.timestamp("us"))
    text, flagged = canon_array(col, tz=tz)
    expected_text: list[str | None] = []
    expected_reasons: list[str] = []
    for w in walls:
        try:
            expected_text.append(canon_value(w, tz=tz))
        except NonexistentLocalTime as exc:
            expected_text.append(None)
            expected_reasons.append(str(exc))
    event(f"a time inside a gap: {bool(expected_reasons)}")
    assert text.to_pylist() == [*expected_text, None]
    assert flagged.tolist() == [t is None for t in expected_text] + [False]
    rows, reasons = nonexistent_times(col, flagged, tz=tz)
    assert rows.tolist() == [i for i, t in enumerate(expected_text) if t is None]
    assert reasons == expected_reasons
    instants = [
        w.replace(tzinfo=zone, fold=0).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for w in walls
    ]
    iso = [w.isoformat() for w in walls]
    for times in (col, pa.array(iso), pa.array([*iso, "2024-01-01T00:00:00+01:00"])):
        us, bad = to_epoch_us(times, tz=tz, unit=None)
        assert not bad.any()
        got = format_epoch(us, unit="us").to_pylist()[: len(walls)]
        assert got == instants, times.type


@settings(max_examples=150, deadline=None)
@given(st.lists(st.none() | st.floats(), min_size=1, max_size=20))
def test_float_canon_and_nonfinite_flags(values: list[float | None]) -> None:
    text, nonfinite = canon_array(pa.array(values, pa.float64()), tz="UTC")
    for v, t, bad in zip(values, text.to_pylist(), nonfinite.tolist(), strict=True):
        if v is None:
            assert (t, bad) == (None, False)
        elif not math.isfinite(v):
            assert (t, bad) == (None, True)
            with pytest.raises(NonFinite):
                canon_value(v)
        else:
            assert (t, bad) == (canon_value(v), False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_key_rejected_by_reference_and_build_actions(bad: float) -> None:
    with pytest.raises(NonFinite):
        transaction_id_value(NS, ["x", bad], tz="UTC")
    spec = parse_mapping(
        {
            "action_name": {"value": "Paid"},
            "time": "t",
            "transaction_id": {"scope": "billing.payments", "key": ["a", "f"]},
        }
    )
    batch = pa.RecordBatch.from_pydict(
        {"t": ["2024-01-01T00:00:00Z"] * 2, "a": ["x", "x"], "f": [1.5, bad]}
    )
    res = build_actions(batch, spec)
    assert res.accepted.tolist() == [0]
    assert res.rejected.tolist() == [1]
    assert res.reasons == [R_KEY_NONFINITE]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.none() | st.text(max_size=5), st.none() | st.integers(-5, 5)),
        min_size=1,
        max_size=15,
    )
)
def test_all_null_key_rejected(rows: list[tuple[str | None, int | None]]) -> None:
    spec = parse_mapping(
        {
            "action_name": {"value": "Paid"},
            "time": "t",
            "transaction_id": {"scope": "billing.payments", "key": ["a", "b"]},
        }
    )
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["2024-01-01T00:00:00Z"] * len(rows), pa.string()),
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.int64()),
        ],
        names=["t", "a", "b"],
    )
    res = build_actions(batch, spec)
    all_null = [i for i, r in enumerate(rows) if r == (None, None)]
    assert res.rejected.tolist() == all_null
    assert res.reasons == [R_KEY_MISSING] * len(all_null)
    assert res.accepted.tolist() == [i for i in range(len(rows)) if i not in all_null]
    sent = [json.loads(r)["transaction_id"] for r in res.records.to_pylist()]
    expected = [transaction_id_value(NS, list(rows[i]), tz="UTC") for i in res.accepted]
    assert sent == expected
