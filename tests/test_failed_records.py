"""The failed-delivery decoder (transforms/failed_records.py): golden lines, and the exact
original bytes of every action split out of an array or NDJSON record (hypothesis)."""

from __future__ import annotations

import base64
import gzip
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.failed_records import (
    RecordError,
    decode_line,
    decode_object,
    split_actions,
)

TID = "0b6f1f5e-2f0a-4c1e-9a53-6c1d2b3a4f50"
ACTION = (
    b'{"action_name": "Billing",  "transaction_id": "' + TID.encode() + b'", '
    b'"request": {"time": "2026-12-01T10:00:00.5Z"}, "metadata": {"amount": 1.10, "x": "\\u00e9"}}'
)


def line(
    raw: bytes, *, arrival: int = 1_764_583_200_000, gz: bool = False, **extra: object
) -> bytes:
    data = gzip.compress(raw) if gz else raw
    doc = {
        "attemptsMade": 3,
        "arrivalTimestamp": arrival,
        "errorCode": "HttpEndpoint.DestinationException",
        "errorMessage": "The endpoint answered 500",
        "attemptEndingTimestamp": arrival + 300_000,
        "rawData": base64.b64encode(data).decode(),
        "subsequenceNumber": 0,
        "dataId": "4963...0",
        **extra,
    }
    return json.dumps(doc).encode()


def test_a_single_action_keeps_its_exact_bytes_without_surrounding_whitespace() -> None:
    decoded = decode_line(1, line(b"  \n" + ACTION + b"\n\n"))
    assert decoded.rejected == ()
    (action,) = decoded.actions
    assert action.data == ACTION  # 1.10 and \u00e9 as written: never re-serialized
    assert action.transaction_id == TID
    assert action.time_us == 1_796_119_200_500_000  # 2026-12-01T10:00:00.5Z
    assert decoded.arrival_ms == 1_764_583_200_000
    assert decoded.error_code == "HttpEndpoint.DestinationException"


def test_gzip_rawdata_arrays_and_ndjson() -> None:
    a2 = ACTION.replace(TID.encode(), str(uuid.UUID(int=2)).encode())
    array = b"[ " + ACTION + b" ,\n" + a2 + b"]"
    assert [a.data for a in decode_line(1, line(array, gz=True)).actions] == [ACTION, a2]
    ndjson = ACTION + b"\n" + a2 + b"\n"
    assert [a.data for a in decode_line(1, line(ndjson)).actions] == [ACTION, a2]


def test_an_object_gzip_is_detected_by_its_magic_bytes_with_several_members() -> None:
    first = gzip.compress(line(ACTION) + b"\n")
    second = gzip.compress(b"\n" + line(b"not json") + b"\n")
    lines = decode_object(first + second)
    assert [x.number for x in lines] == [1, 3]
    assert lines[0].actions[0].data == ACTION
    assert lines[1].line_rejected and "not valid JSON" in lines[1].rejected[0].reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"this is not json", "not a JSON line"),
        (b"[1, 2]", "not a failed-delivery line"),
        (json.dumps({"errorCode": "x"}).encode(), "no rawData"),
        (json.dumps({"rawData": "%%%not base64"}).encode(), "not base64"),
        (json.dumps({"rawData": base64.b64encode(b"\xff\xfe").decode()}).encode(), "not UTF-8"),
        (json.dumps({"rawData": base64.b64encode(b"\x1f\x8bxx").decode()}).encode(), "gzip"),
        (json.dumps({"rawData": base64.b64encode(b"{oops").decode()}).encode(), "not valid JSON"),
        (json.dumps({"rawData": base64.b64encode(b"[]").decode()}).encode(), "no action"),
        (json.dumps({"rawData": ""}).encode(), "no action"),
    ],
)
def test_undecodable_lines_are_rejected_with_the_reason(raw: bytes, reason: str) -> None:
    decoded = decode_line(7, raw)
    assert decoded.actions == () and decoded.count == 1
    (rejected,) = decoded.rejected
    assert rejected.index is None and reason in rejected.reason, rejected.reason


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ({"action_name": "a", "request": {}}, "transaction_id"),
        ({"action_name": "a", "request": {}, "transaction_id": "abc"}, "transaction_id"),
        ({"action_name": "a", "request": {}, "transaction_id": "x" * 36}, "transaction_id"),
        ({"request": {}, "transaction_id": TID}, "action_name"),
        ({"action_name": "a", "transaction_id": TID}, "request"),
        ({"action_name": "a", "request": {"time": "yesterday"}, "transaction_id": TID}, "time"),
        ("just a string", "not a JSON object"),
    ],
)
def test_invalid_actions_are_rejected_one_by_one(action: object, reason: str) -> None:
    record = b"[" + ACTION + b"," + json.dumps(action).encode() + b"]"
    decoded = decode_line(1, line(record))
    assert [a.data for a in decoded.actions] == [ACTION]
    (rejected,) = decoded.rejected
    assert rejected.index == 1 and reason in rejected.reason, rejected.reason


def test_a_missing_time_is_sent_moesif_fills_it_in() -> None:
    raw = json.dumps({"action_name": "a", "request": {}, "transaction_id": TID}).encode()
    (action,) = decode_line(1, line(raw)).actions
    assert action.time_us is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_ws = st.sampled_from(["", " ", "\n", "\t", " \r\n  "])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_json_values, st.booleans(), _ws, _ws), min_size=1, max_size=5),
    st.booleans(),
)
def test_splitting_returns_the_exact_original_element_bytes(
    items: list[tuple[object, bool, str, str]], as_array: bool
) -> None:
    texts = [
        json.dumps(v, ensure_ascii=ascii_, indent=None if ascii_ else 1)
        for v, ascii_, _, _ in items
    ]
    if as_array:
        record = (
            "[" + ",".join(f"{a}{t}{b}" for t, (_, _, a, b) in zip(texts, items, strict=True)) + "]"
        )
    else:
        record = "\n".join(f"{a}{t}{b}" for t, (_, _, a, b) in zip(texts, items, strict=True))
    if not as_array and texts[0].startswith("["):
        return  # a record starting with an array is one array of actions, by definition
    got = split_actions(record)
    assert [data for data, _ in got] == [t.encode() for t in texts]
    assert [value for _, value in got] == [json.loads(t) for t in texts]


def test_ndjson_values_that_are_arrays_after_the_first_are_values() -> None:
    with pytest.raises(RecordError):
        split_actions("[1] [2]")  # an array record must be one array
    assert [d for d, _ in split_actions('{"a":1}\n[2]')] == [b'{"a":1}', b"[2]"]
