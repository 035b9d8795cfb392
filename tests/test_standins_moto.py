"""The local Firehose stand-ins: moto (Firehose + S3) delivering to the HTTP-endpoint receiver.

Everything listens and talks on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.standins.moto_firehose import LocalFirehose, StreamHandle, aws_client
from tests.standins.receiver import ACCESS_KEY_HEADER, FirehoseReceiver

REPO_ROOT = Path(__file__).resolve().parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def make_action(tid: str | None = None, **extra: Any) -> dict[str, Any]:
    action: dict[str, Any] = {
        "action_name": "billing_usage",
        "request": {"time": "2026-11-01T12:00:00.000Z"},
        "transaction_id": tid or str(uuid.uuid4()),
        "company_id": "cmp_1",
        "metadata": {"units": 3},
    }
    action.update(extra)
    return action


def put_batch(handle: StreamHandle, payloads: list[bytes]) -> dict[str, Any]:
    client = handle.firehose_client(retries={"max_attempts": 1})
    response: dict[str, Any] = client.put_record_batch(
        DeliveryStreamName=handle.stream, Records=[{"Data": p} for p in payloads]
    )
    return response


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def delivery_body(actions: list[Any], request_id: str = "req-1") -> bytes:
    records = [
        {"data": base64.b64encode(a if isinstance(a, bytes) else json.dumps(a).encode()).decode()}
        for a in actions
    ]
    doc = {"requestId": request_id, "timestamp": int(time.time() * 1000), "records": records}
    return json.dumps(doc).encode()


# -- through moto --------------------------------------------------------------------------------
def test_put_record_batch_reaches_receiver_and_resend_counts_duplicates(
    moto_firehose_stream: StreamHandle,
) -> None:
    receiver = moto_firehose_stream.receiver
    actions = [make_action() for _ in range(300)]
    payloads = [json.dumps(a).encode() for a in actions]

    response = put_batch(moto_firehose_stream, payloads)
    assert response["FailedPutCount"] == 0
    assert len(response["RequestResponses"]) == 300

    stats = receiver.stats()
    assert stats["records"] == stats["valid"] == 300
    assert stats["invalid"] == 0
    assert stats["unique_transaction_ids"] == 300
    assert stats["duplicates"] == 0
    assert receiver.transaction_ids() == {a["transaction_id"] for a in actions}
    assert receiver.actions() == actions

    # What moto sends (documented in receiver's docstring): one POST per call, to the
    # configured path, no gzip, no X-Amz-Firehose headers, timestamp in seconds.
    [sent] = receiver.request_log()
    assert sent["path"] == "/v1/partners/aws/kinesis/actions"
    assert sent["records"] == 300
    assert sent["content_encoding"] == "identity"
    assert sent["access_key_header"] is False
    assert sent["header_request_id"] is None
    assert sent["protocol_version"] is None
    assert abs(sent["timestamp"] - time.time()) < 600

    # A resend of 100 of them: same unique ids, 100 duplicates.
    put_batch(moto_firehose_stream, payloads[:100])
    stats = receiver.stats()
    assert stats["valid"] == 400
    assert stats["unique_transaction_ids"] == 300
    assert stats["duplicates"] == 100
    assert stats["requests"] == 2


def test_invalid_actions_are_counted_invalid(moto_firehose_stream: StreamHandle) -> None:
    good = [make_action(), make_action()]
    bad: list[bytes] = [
        json.dumps(
            {"request": {"time": "2026-11-01T00:00:00Z"}, "transaction_id": str(uuid.uuid4())}
        ).encode(),
        json.dumps(make_action(tid=str(uuid.uuid4()).upper())).encode(),
        json.dumps(make_action(tid="not-a-uuid")).encode(),
        json.dumps({k: v for k, v in make_action().items() if k != "transaction_id"}).encode(),
        json.dumps(make_action(request={"time": "yesterday"})).encode(),
        json.dumps(make_action(request={})).encode(),
        json.dumps(make_action(metadata="flat")).encode(),
        (json.dumps(make_action()) + "\n" + json.dumps(make_action())).encode(),
        json.dumps([make_action()]).encode(),
        b"hello, not json",
    ]
    response = put_batch(moto_firehose_stream, [json.dumps(a).encode() for a in good] + bad)
    assert response["FailedPutCount"] == 0  # moto never reports what the endpoint thought

    stats = moto_firehose_stream.receiver.stats()
    assert stats["records"] == 12
    assert stats["valid"] == 2
    assert stats["invalid"] == len(bad)
    assert stats["unique_transaction_ids"] == 2
    errors = "\n".join(stats["errors"])
    for expected in ("action_name", "lowercase UUID", "ISO 8601", "request.time", "metadata"):
        assert expected in errors
    assert "not one JSON object" in errors  # newline-separated actions and plain text
    assert "JSON list, not one action object" in errors


def test_moto_enforces_no_batch_limit(moto_firehose_stream: StreamHandle) -> None:
    """A canary for FACTS.md: moto takes 501 records in one call (real Firehose: max 500)."""
    response = put_batch(moto_firehose_stream, [json.dumps(make_action()).encode()] * 501)
    assert response["FailedPutCount"] == 0
    stats = moto_firehose_stream.receiver.stats()
    assert stats["valid"] == 501
    assert stats["duplicates"] == 500


def test_session_fixture_default_stream(moto_firehose: LocalFirehose) -> None:
    moto_firehose.ensure()
    client = aws_client("firehose", moto_firehose.endpoint_url, moto_firehose.region)
    desc = client.describe_delivery_stream(DeliveryStreamName=moto_firehose.stream)
    [dest] = desc["DeliveryStreamDescription"]["Destinations"]
    http_dest = dest["HttpEndpointDestinationDescription"]
    assert http_dest["EndpointConfiguration"]["Url"] == moto_firehose.delivery_url
    assert "AccessKey" not in http_dest["EndpointConfiguration"]  # never echoed back
    assert http_dest["S3DestinationDescription"]["BucketARN"].endswith(moto_firehose.bucket)
    buckets = moto_firehose.s3_client().list_buckets()["Buckets"]
    assert moto_firehose.bucket in {b["Name"] for b in buckets}
    assert moto_firehose.endpoint_url.startswith("http://127.0.0.1:")
    assert moto_firehose.receiver.url.startswith("http://127.0.0.1:")


# -- the receiver directly -----------------------------------------------------------------------
@pytest.fixture
def keyed_receiver() -> Iterator[FirehoseReceiver]:
    with FirehoseReceiver(access_key="right-key", max_actions=3) as receiver:
        yield receiver


def test_gzip_body_is_accepted_and_answer_follows_protocol(
    keyed_receiver: FirehoseReceiver,
) -> None:
    actions = [make_action() for _ in range(5)]
    body = gzip.compress(delivery_body(actions, request_id="gz-1"))
    status, answer = http(
        keyed_receiver.url + "/v1/partners/aws/kinesis/actions",
        body,
        {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "X-Amz-Firehose-Protocol-Version": "1.0",
            "X-Amz-Firehose-Request-Id": "gz-1",
            ACCESS_KEY_HEADER: "right-key",
        },
    )
    assert status == 200
    doc = json.loads(answer)
    assert doc["requestId"] == "gz-1"
    assert doc["timestamp"] > 10**12  # milliseconds
    assert "errorMessage" not in doc
    stats = keyed_receiver.stats()
    assert (stats["valid"], stats["unique_transaction_ids"]) == (5, 5)
    assert stats["actions_kept"] == 3 and stats["actions_dropped"] == 2
    assert keyed_receiver.actions() == actions[:3]
    [sent] = keyed_receiver.request_log()
    assert sent["content_encoding"] == "gzip"
    assert sent["access_key_header"] is True
    assert "right-key" not in json.dumps(sent) + repr(keyed_receiver)


def test_access_key_mismatch_is_401_and_missing_key_is_accepted(
    keyed_receiver: FirehoseReceiver,
) -> None:
    body = delivery_body([make_action()], request_id="auth-1")
    status, answer = http(keyed_receiver.url, body, {ACCESS_KEY_HEADER: "wrong-key"})
    assert status == 401
    doc = json.loads(answer)
    assert doc["requestId"] == "auth-1"
    assert doc["errorMessage"] == "access key mismatch"
    assert keyed_receiver.stats()["records"] == 0
    assert keyed_receiver.stats()["rejected_requests"] == {"401": 1}

    status, _ = http(keyed_receiver.url, body)  # no header at all: what moto sends
    assert status == 200
    assert keyed_receiver.stats()["valid"] == 1

    with FirehoseReceiver(access_key="k", require_access_key=True) as strict:
        status, _ = http(strict.url, body)
        assert status == 401


def test_malformed_bodies_are_400(keyed_receiver: FirehoseReceiver) -> None:
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"not json", {}),
        (json.dumps({"requestId": "x", "timestamp": 1}).encode(), {}),
        (json.dumps({"timestamp": 1, "records": []}).encode(), {}),
        (json.dumps({"requestId": "x", "timestamp": "now", "records": []}).encode(), {}),
        (b"\x1f\x8b not really gzip", {"Content-Encoding": "gzip"}),
        (delivery_body([make_action()]), {"Content-Encoding": "br"}),
    ]
    for body, headers in cases:
        status, answer = http(keyed_receiver.url, body, headers)
        assert status == 400, body
        assert json.loads(answer)["errorMessage"]
    stats = keyed_receiver.stats()
    assert stats["records"] == 0
    assert stats["rejected_requests"] == {"400": len(cases)}


def test_http_views_and_reset(keyed_receiver: FirehoseReceiver) -> None:
    actions = [make_action() for _ in range(4)]
    assert http(keyed_receiver.url, delivery_body(actions))[0] == 200
    status, body = http(keyed_receiver.url + "/stats", method="GET")
    assert status == 200
    assert json.loads(body) == keyed_receiver.stats()
    status, body = http(keyed_receiver.url + "/transaction_ids", method="GET")
    assert body.decode().split() == sorted(a["transaction_id"] for a in actions)
    assert http(keyed_receiver.url + "/stats", method="DELETE")[0] == 200
    assert keyed_receiver.stats()["records"] == 0
    assert keyed_receiver.transaction_ids() == set()


# -- the CLI, as `make demo` uses it ------------------------------------------------------------
def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.standins", *args],
        cwd=REPO_ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.e2e
def test_cli_up_stats_down_round_trip(tmp_path: Path) -> None:
    state_file = tmp_path / "standins.json"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.standins",
            "up",
            "--state-file",
            str(state_file),
            "--stream",
            "cli-stream",
        ],
        cwd=REPO_ROOT,
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waited = _run_cli("wait", "--state-file", str(state_file), "--timeout", "20")
        assert waited.returncode == 0, waited.stderr
        state = json.loads(state_file.read_text())
        assert set(state) >= {"endpoint_url", "region", "stream", "receiver_url", "pid"}
        assert state["stream"] == "cli-stream"
        assert state["pid"] == up.pid
        assert state["endpoint_url"].startswith("http://127.0.0.1:")

        # A second `up` on the same state file refuses to start.
        again = _run_cli("up", "--state-file", str(state_file))
        assert again.returncode == 1 and "already running" in again.stderr

        actions = [make_action() for _ in range(50)]
        client = aws_client("firehose", state["endpoint_url"], state["region"])
        records = [{"Data": json.dumps(a).encode()} for a in actions + actions[:10]]
        client.put_record_batch(DeliveryStreamName=state["stream"], Records=records)

        stats = _run_cli("stats", "--state-file", str(state_file))
        assert stats.returncode == 0, stats.stderr
        doc = json.loads(stats.stdout)
        assert (doc["valid"], doc["unique_transaction_ids"], doc["duplicates"]) == (60, 50, 10)
        ids = _run_cli("stats", "--state-file", str(state_file), "--transaction-ids")
        assert set(ids.stdout.split()) == {a["transaction_id"] for a in actions}

        # the Collector API stand-in: one batch of the same actions, then its stats
        from connectors.moesif_collector import CollectorClient
        from tests.standins.__main__ import DEMO_APP_ID

        app_id = os.environ.get("MOESIF_APPLICATION_ID") or DEMO_APP_ID
        client_m = CollectorClient(state["collector_url"], app_id)
        body = gzip.compress(b"[" + b",".join(json.dumps(a).encode() for a in actions) + b"]")
        assert client_m.post(body).status == 201
        client_m.close()
        collected = _run_cli("stats", "--state-file", str(state_file), "--collector")
        assert json.loads(collected.stdout)["unique_transaction_ids"] == 50
        assert app_id not in state_file.read_text()

        down = _run_cli("down", "--state-file", str(state_file))
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=10) == 0
        assert not state_file.exists()
        assert _run_cli("down", "--state-file", str(state_file)).returncode == 0  # idempotent
        assert _run_cli("stats", "--state-file", str(state_file)).returncode == 1
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=10)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        for stream in (up.stdout, up.stderr):
            if stream is not None:
                stream.close()
