"""The strict Firehose endpoint enforces the real limits and injects faults (real boto3 client)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from connectors.firehose_client import make_firehose_client
from tests.standins.strict_firehose import StrictFirehose

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _put(client: Any, stream: str, records: list[bytes]) -> dict[str, Any]:
    response: dict[str, Any] = client.put_record_batch(
        DeliveryStreamName=stream, Records=[{"Data": r} for r in records]
    )
    return response


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# -- limits --------------------------------------------------------------------------------------


def test_500_records_accepted_501_rejected(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    assert _put(strict_firehose_client, firehose_stream, [b"a"] * 500)["FailedPutCount"] == 0
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, firehose_stream, [b"b"] * 501)
    assert _error(excinfo) == ("ValidationException", 400)
    assert "less than or equal to 500" in str(excinfo.value)
    assert strict_firehose.records(firehose_stream) == [b"a"] * 500


def test_record_of_1024000_bytes_accepted_1024001_rejected(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    _put(strict_firehose_client, firehose_stream, [b"x" * 1_024_000])
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, firehose_stream, [b"ok", b"y" * 1_024_001])
    assert _error(excinfo) == ("ValidationException", 400)
    assert "records.2.member.data" in str(excinfo.value)
    assert [len(r) for r in strict_firehose.records(firehose_stream)] == [1_024_000]


def test_4_mib_per_call_accepted_one_byte_more_rejected(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    exactly = [b"x" * 1_024_000] * 4 + [b"y" * (4 * MIB - 4 * 1_024_000)]
    assert sum(map(len, exactly)) == 4 * MIB
    _put(strict_firehose_client, firehose_stream, exactly)
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, firehose_stream, [*exactly, b"z"])
    assert _error(excinfo) == ("InvalidArgumentException", 400)
    assert len(strict_firehose.records(firehose_stream)) == 5
    assert strict_firehose.stream_counters(firehose_stream)["invalid_requests"] == 1


def test_unknown_stream_is_resource_not_found(strict_firehose_client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, "no-such-stream", [b"x"])
    assert _error(excinfo) == ("ResourceNotFoundException", 400)
    with pytest.raises(strict_firehose_client.exceptions.ResourceNotFoundException):
        strict_firehose_client.describe_delivery_stream(DeliveryStreamName="no-such-stream")


def test_control_plane_operations(
    strict_firehose: StrictFirehose, strict_firehose_client: Any
) -> None:
    client = strict_firehose_client
    arn = client.create_delivery_stream(DeliveryStreamName="ctl-plane-a")["DeliveryStreamARN"]
    assert arn.endswith(":deliverystream/ctl-plane-a")
    with pytest.raises(client.exceptions.ResourceInUseException):
        client.create_delivery_stream(DeliveryStreamName="ctl-plane-a")
    described = client.describe_delivery_stream(DeliveryStreamName="ctl-plane-a")
    assert described["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    assert "ctl-plane-a" in client.list_delivery_streams(Limit=1000)["DeliveryStreamNames"]
    record_id = client.put_record(DeliveryStreamName="ctl-plane-a", Record={"Data": b"one"})
    assert record_id["RecordId"]
    client.delete_delivery_stream(DeliveryStreamName="ctl-plane-a")
    assert "ctl-plane-a" not in client.list_delivery_streams(Limit=1000)["DeliveryStreamNames"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.put_record(DeliveryStreamName="ctl-plane-a", Record={"Data": b"two"})
    assert strict_firehose.records("ctl-plane-a") == [b"one"]


def test_kinesis_source_stream_refuses_direct_put(strict_firehose_client: Any) -> None:
    strict_firehose_client.create_delivery_stream(
        DeliveryStreamName="ctl-kinesis-source", DeliveryStreamType="KinesisStreamAsSource"
    )
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, "ctl-kinesis-source", [b"x"])
    assert _error(excinfo) == ("InvalidArgumentException", 400)


# -- faults --------------------------------------------------------------------------------------


def test_throttle_is_service_unavailable_and_stores_nothing(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(throttle_rate=1.0)
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, firehose_stream, [b"x"] * 3)
    assert _error(excinfo) == ("ServiceUnavailableException", 400)
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["put_calls"] == 1  # botocore retries are off: one call, one attempt
    assert counters["throttled"] == 1
    assert strict_firehose.records(firehose_stream) == []


def test_server_errors_are_500_or_non_json_503(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(server_error_rate=1.0)
    seen = set()
    for _ in range(12):
        with pytest.raises(ClientError) as excinfo:
            _put(strict_firehose_client, firehose_stream, [b"x"])
        seen.add(_error(excinfo))
    assert seen == {("InternalFailure", 500), ("503", 503)}
    assert strict_firehose.records(firehose_stream) == []


def test_record_failures_are_reported_per_record_and_not_stored(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(record_failure_rate=0.5)
    records = [f"r{i}".encode() for i in range(200)]
    response = _put(strict_firehose_client, firehose_stream, records)
    entries = response["RequestResponses"]
    failed = [r for r, e in zip(records, entries, strict=True) if "ErrorCode" in e]
    assert 50 < len(failed) < 150
    assert response["FailedPutCount"] == len(failed)
    assert {e["ErrorCode"] for e in entries if "ErrorCode" in e} == {
        "ServiceUnavailableException",
        "InternalFailure",
    }
    assert all(("RecordId" in e) != ("ErrorCode" in e) for e in entries)
    stored = strict_firehose.records(firehose_stream)
    assert stored == [r for r in records if r not in failed]


@pytest.mark.parametrize("code", ["ServiceUnavailableException", "InternalFailure"])
def test_record_failure_code_sets_every_failed_records_code(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str, code: str
) -> None:
    strict_firehose.configure(record_failure_rate=0.5, record_failure_code=code)
    response = _put(strict_firehose_client, firehose_stream, [b"r"] * 100)
    codes = [e["ErrorCode"] for e in response["RequestResponses"] if "ErrorCode" in e]
    assert codes and set(codes) == {code} and response["FailedPutCount"] == len(codes)
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["failed_records"] == len(codes)
    assert counters["throttled_records"] == (len(codes) if code[0] == "S" else 0)
    with pytest.raises(ValueError, match="record_failure_code"):
        strict_firehose.configure(record_failure_code="Nope")


def test_bad_answers_do_not_acknowledge_each_record(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    """What a proxy in between might answer, read by plain boto3: HTTP 200 every time."""
    records = [b"r%d" % i for i in range(10)]
    answers = {}
    for kind in ("empty", "short", "miscounted"):
        strict_firehose.configure(bad_answer_rate=1.0, bad_answer=kind)
        answers[kind] = _put(strict_firehose_client, firehose_stream, records)
        assert answers[kind]["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "RequestResponses" not in answers["empty"]
    assert "FailedPutCount" not in answers["empty"]
    assert answers["short"]["FailedPutCount"] == 0
    assert len(answers["short"]["RequestResponses"]) == 9
    assert answers["miscounted"]["FailedPutCount"] == 0
    entries = answers["miscounted"]["RequestResponses"]
    assert len(entries) == 10 and entries[-1]["ErrorCode"] == "InternalFailure"
    assert all("RecordId" in e for e in entries[:-1])
    # "empty" and "short" stored every record; "miscounted" all but the last one
    assert strict_firehose.records(firehose_stream) == records * 2 + records[:-1]
    counters = strict_firehose.stream_counters(firehose_stream)
    assert counters["bad_answers"] == 3 and counters["failed_records"] == 1
    with pytest.raises(ValueError, match="bad_answer"):
        strict_firehose.configure(bad_answer="garbled")


def test_success_answer_is_the_json_botocore_expects(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    """The stand-in's fast, pre-serialised success answer: the same JSON as json.dumps would
    give, unique RecordIds across calls, and botocore's own parser reads it."""
    body = json.dumps(
        {"DeliveryStreamName": firehose_stream, "Records": [{"Data": "YQ=="}] * 3}
    ).encode()
    status, answer = strict_firehose.handle_api("Firehose_20150804.PutRecordBatch", body, True)
    assert status == 200
    parsed = json.loads(answer)
    assert json.dumps(parsed).encode() == answer
    assert parsed["FailedPutCount"] == 0 and parsed["Encrypted"] is False
    via_boto = _put(strict_firehose_client, firehose_stream, [b"b"] * 500)
    assert via_boto["FailedPutCount"] == 0
    ids = [e["RecordId"] for e in parsed["RequestResponses"] + via_boto["RequestResponses"]]
    assert len(ids) == len(set(ids)) == 503
    assert strict_firehose.records(firehose_stream) == [b"a"] * 3 + [b"b"] * 500


def test_same_seed_gives_same_faults() -> None:
    patterns = []
    for _ in range(2):
        with StrictFirehose(seed=42) as server:
            server.create_stream("s")
            server.configure(record_failure_rate=0.3)
            client = make_firehose_client(region="us-east-1", endpoint_url=server.endpoint_url)
            entries = _put(client, "s", [b"x"] * 100)["RequestResponses"]
            patterns.append([i for i, e in enumerate(entries) if "ErrorCode" in e])
    assert patterns[0] == patterns[1]
    assert patterns[0]


def test_drop_before_store_closes_connection_and_stores_nothing(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(drop_before_store_rate=1.0)
    with pytest.raises(ConnectionClosedError):
        _put(strict_firehose_client, firehose_stream, [b"x"])
    assert strict_firehose.records(firehose_stream) == []
    strict_firehose.reset_faults()
    _put(strict_firehose_client, firehose_stream, [b"y"])  # the client reconnects
    assert strict_firehose.records(firehose_stream) == [b"y"]


def test_drop_after_store_keeps_the_records(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(drop_after_store_rate=1.0)
    with pytest.raises(ConnectionClosedError):
        _put(strict_firehose_client, firehose_stream, [b"x", b"y"])
    assert strict_firehose.records(firehose_stream) == [b"x", b"y"]
    assert strict_firehose.stream_counters(firehose_stream)["dropped_after_store"] == 1


def test_latency_is_applied(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(latency_s=0.05, latency_spike_rate=1.0, latency_spike_s=0.1)
    started = time.monotonic()
    _put(strict_firehose_client, firehose_stream, [b"x"])
    assert time.monotonic() - started >= 0.14


def test_stream_disappears_after_n_calls(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(delete_stream_after_calls=2)
    _put(strict_firehose_client, firehose_stream, [b"1"])
    _put(strict_firehose_client, firehose_stream, [b"2"])
    with pytest.raises(ClientError) as excinfo:
        _put(strict_firehose_client, firehose_stream, [b"3"])
    assert _error(excinfo) == ("ResourceNotFoundException", 400)
    assert strict_firehose.records(firehose_stream) == [b"1", b"2"]


def test_auth_error_fault(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(auth_error="UnrecognizedClientException")
    with pytest.raises(ClientError) as excinfo:
        strict_firehose_client.describe_delivery_stream(DeliveryStreamName=firehose_stream)
    assert _error(excinfo) == ("UnrecognizedClientException", 400)


def test_configure_rejects_unknown_or_invalid_settings(strict_firehose: StrictFirehose) -> None:
    with pytest.raises(TypeError):
        strict_firehose.configure(throttle=0.5)
    with pytest.raises(ValueError):
        strict_firehose.configure(throttle_rate=1.5)


def test_transaction_ids(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    actions = [
        json.dumps({"transaction_id": f"t{i}", "action_name": "a"}).encode() for i in range(3)
    ]
    _put(strict_firehose_client, firehose_stream, actions)
    assert strict_firehose.transaction_ids(firehose_stream) == ["t0", "t1", "t2"]


# -- control API and CLI -------------------------------------------------------------------------


def _http(url: str, body: dict[str, Any] | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload: bytes = response.read()
        return payload


def test_http_control_api(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    base = strict_firehose.endpoint_url + "/_strict"
    _put(
        strict_firehose_client,
        firehose_stream,
        [b'{"transaction_id": "t1"}', b'{"transaction_id": "t2"}'],
    )
    lines = _http(f"{base}/records?stream={firehose_stream}").splitlines()
    assert [json.loads(line)["transaction_id"] for line in lines] == ["t1", "t2"]
    b64 = _http(f"{base}/records?stream={firehose_stream}&format=b64").splitlines()
    assert len(b64) == 2 and "data" in json.loads(b64[0])
    assert json.loads(_http(f"{base}/transaction_ids?stream={firehose_stream}")) == ["t1", "t2"]
    stats = json.loads(_http(f"{base}/stats"))
    assert stats["streams"][firehose_stream]["records"] == 2
    faults = json.loads(_http(f"{base}/faults", {"throttle_rate": 1.0}))
    assert faults["throttle_rate"] == 1.0
    assert strict_firehose.faults.throttle_rate == 1.0
    faults = json.loads(_http(f"{base}/faults", {"reset": True}))
    assert faults["throttle_rate"] == 0.0
    _http(f"{base}/streams", {"name": "ctl-http-created"})
    assert strict_firehose.records("ctl-http-created") == []
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        _http(f"{base}/faults", {"no_such_fault": 1})
    assert excinfo.value.code == 400


def test_cli_serves_until_sigterm(tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.standins.strict_firehose",
            "--port",
            "0",
            "--stream",
            "cli-stream",
            "--seed",
            "3",
            "--throttle-rate",
            "1.0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,  # `-m tests.standins...` resolves from the repository root
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = make_firehose_client(region="us-east-1", endpoint_url=url)
        with pytest.raises(ClientError) as excinfo:
            _put(client, "cli-stream", [b"x"])
        assert _error(excinfo)[0] == "ServiceUnavailableException"
        _http(f"{url}/_strict/faults", {"reset": True})
        _put(client, "cli-stream", [b"y"])
        assert _http(f"{url}/_strict/records?stream=cli-stream") == b"y\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
