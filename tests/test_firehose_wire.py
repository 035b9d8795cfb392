"""The lean PutRecordBatch path sends what botocore sends and reports what botocore reports.

Every comparison runs the same call both ways against a real HTTP endpoint (the strict stand-in,
moto server, or a capturing loopback server) with a real boto3 client. Runtime: ~5 s.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber

from connectors.firehose import TRANSPORT_ERRORS, FirehoseSender, make_firehose_client
from connectors.firehose_wire import WirePutRecordBatch, _unsupported, request_url
from moesif_backfill.standins.moto_firehose import StreamHandle
from moesif_backfill.standins.strict_firehose import StrictFirehose

pytestmark = pytest.mark.integration

RECORD_SETS = [
    [b'{"transaction_id": "a"}'],
    [b"", b"\x00\xff\xfe binary", "unicode ✓ é".encode(), b"x" * 1000],
    [b"%d" % i for i in range(500)],
]


def _wire(client: Any) -> WirePutRecordBatch:
    assert _unsupported(client) is None
    return WirePutRecordBatch(client)


def _botocore_body(stream: str, records: list[bytes]) -> bytes:
    """The body botocore serialises, captured before sending (nothing is sent)."""
    client = boto3.client("firehose", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    captured: list[bytes] = []

    class Stop(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        captured.append(request.body)
        raise Stop

    client.meta.events.register("before-send.firehose.PutRecordBatch", capture)
    with pytest.raises(Stop):
        client.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": r} for r in records])
    return captured[0]


@pytest.mark.parametrize("records", RECORD_SETS, ids=["one", "odd-bytes", "500"])
def test_body_is_byte_identical_to_botocore(records: list[bytes]) -> None:
    stream = 'stream-"quoted"-é'
    ours = WirePutRecordBatch.body(stream, records)
    theirs = _botocore_body(stream, records)
    assert ours == theirs
    decoded = json.loads(ours)
    assert decoded["DeliveryStreamName"] == stream
    assert [base64.b64decode(r["Data"]) for r in decoded["Records"]] == records


# -- a capturing endpoint: what goes over the wire, and is the signature right ------------------


class _Capture(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[dict[str, str], bytes]]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        count = len(json.loads(body)["Records"])
        answer = json.dumps(
            {
                "FailedPutCount": 0,
                "Encrypted": False,
                "RequestResponses": [{"RecordId": str(i)} for i in range(count)],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def capture_server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    seen: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (_Capture,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_request_matches_botocore_and_signature_verifies(
    capture_server: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, seen = capture_server
    client = make_firehose_client(region="eu-west-1", endpoint_url=url)
    records = RECORD_SETS[1]
    client.put_record_batch(DeliveryStreamName="s", Records=[{"Data": r} for r in records])
    answer = _wire(client).put_record_batch("s", records)
    assert answer["FailedPutCount"] == 0
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    (boto_headers, boto_body), (wire_headers, wire_body) = seen
    assert wire_body == boto_body
    for name in ("x-amz-target", "content-type", "content-length", "host"):
        assert wire_headers[name] == boto_headers[name], name
    assert "/eu-west-1/firehose/aws4_request" in wire_headers["authorization"]

    # Recompute the SigV4 signature independently over the bytes the server received.
    signed = wire_headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=wire_body,
        headers={name: wire_headers[name] for name in signed},
    )
    request.context["timestamp"] = wire_headers["x-amz-date"]
    creds = Credentials("testing-key-id", "testing-secret-key")
    auth = SigV4Auth(creds, "firehose", "eu-west-1")
    string_to_sign = auth.string_to_sign(request, auth.canonical_request(request))
    assert wire_headers["authorization"].endswith(
        "Signature=" + auth.signature(string_to_sign, request)
    )


def test_refreshable_credentials_are_refreshed(
    capture_server: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, seen = capture_server
    refreshed: list[int] = []

    def refresh() -> dict[str, str]:
        refreshed.append(1)
        return {
            "access_key": f"AKIDREFRESHED{len(refreshed):04d}",
            "secret_key": "refreshed-secret",
            "token": f"token-{len(refreshed)}",
            # 5 minutes left: inside botocore's mandatory refresh window, so every use refreshes
            "expiry_time": (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat(),
        }

    core = botocore.session.Session()
    core._credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    client = make_firehose_client(
        region="us-east-1", endpoint_url=url, session=boto3.session.Session(botocore_session=core)
    )
    wire = _wire(client)
    wire.put_record_batch("s", [b"a"])
    wire.put_record_batch("s", [b"b"])
    keys = [h["authorization"].split("Credential=")[1].split("/")[0] for h, _ in seen]
    tokens = [h["x-amz-security-token"] for h, _ in seen]
    assert len(set(keys)) == 2 and len(set(tokens)) == 2, (keys, tokens)


# -- against the strict endpoint: same answers and same errors as botocore -----------------------


def _outcome(call: Callable[[], dict[str, Any]]) -> tuple[str, Any]:
    try:
        response = call()
    except ClientError as exc:
        r = exc.response
        return (
            type(exc).__name__,
            (r["Error"]["Code"], r["Error"]["Message"], r["ResponseMetadata"]["HTTPStatusCode"]),
        )
    entries = response["RequestResponses"]
    return "ok", (
        response["FailedPutCount"],
        [(e.get("ErrorCode"), e.get("ErrorMessage"), "RecordId" in e) for e in entries],
    )


def _both(
    server: StrictFirehose, client: Any, stream: str, records: list[bytes], **faults: Any
) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """(botocore's outcome, the wire's outcome) of the same call under the same seeded fault."""
    outcomes = []
    for call in (
        lambda: client.put_record_batch(
            DeliveryStreamName=stream, Records=[{"Data": r} for r in records]
        ),
        lambda: _wire(client).put_record_batch(stream, records),
    ):
        server.reset_faults()
        server.reseed(3)
        server.configure(**faults)
        outcomes.append(_outcome(call))
    server.reset_faults()
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize(
    ("faults", "expected_code", "status"),
    [
        ({"throttle_rate": 1.0}, "ServiceUnavailableException", 400),
        ({"throttle_rate": 1.0, "throttle_http_status": 503}, "ServiceUnavailableException", 503),
        ({"server_error_rate": 1.0}, None, None),  # 500 InternalFailure or a non-JSON 503
        ({"auth_error": "AccessDeniedException"}, "AccessDeniedException", 400),
    ],
    ids=["throttle-400", "throttle-503", "5xx", "access-denied"],
)
def test_error_answers_match_botocore(
    strict_firehose: StrictFirehose,
    strict_firehose_client: Any,
    firehose_stream: str,
    faults: dict[str, Any],
    expected_code: str | None,
    status: int | None,
) -> None:
    boto, wire = _both(strict_firehose, strict_firehose_client, firehose_stream, [b"r"], **faults)
    assert wire == boto
    kind, (code, _, http) = wire
    assert kind != "ok"
    if expected_code is not None:
        assert (code, http) == (expected_code, status)
    else:
        assert (code, http) in {("InternalFailure", 500), ("503", 503)}


def test_server_errors_cover_500_and_non_json_503(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    wire = _wire(strict_firehose_client)
    strict_firehose.configure(server_error_rate=1.0)
    seen = set()
    for _ in range(30):
        with pytest.raises(ClientError) as excinfo:
            wire.put_record_batch(firehose_stream, [b"r"])
        r = excinfo.value.response
        seen.add((r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]))
    assert seen == {("InternalFailure", 500), ("503", 503)}


@pytest.mark.parametrize(
    ("records", "code"),
    [
        ([b"a"] * 501, "ValidationException"),
        ([b"ok", b"y" * 1_024_001], "ValidationException"),
        ([b"z" * 1_000_000] * 5, "InvalidArgumentException"),
    ],
    ids=["501-records", "record-too-big", "over-4-mib"],
)
def test_validation_errors_match_botocore(
    strict_firehose: StrictFirehose,
    strict_firehose_client: Any,
    firehose_stream: str,
    records: list[bytes],
    code: str,
) -> None:
    boto, wire = _both(strict_firehose, strict_firehose_client, firehose_stream, records)
    assert wire == boto
    assert wire[1][0] == code and wire[1][2] == 400
    assert strict_firehose.records(firehose_stream) == []


def test_unknown_stream_matches_botocore(
    strict_firehose: StrictFirehose, strict_firehose_client: Any
) -> None:
    boto, wire = _both(strict_firehose, strict_firehose_client, "no-such-stream", [b"a"])
    assert wire == boto
    assert wire[0] == "ResourceNotFoundException"
    assert wire[1][0] == "ResourceNotFoundException"
    with pytest.raises(strict_firehose_client.exceptions.ResourceNotFoundException):
        _wire(strict_firehose_client).put_record_batch("no-such-stream", [b"a"])


def test_partial_failures_match_botocore(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    records = [b"%d" % i for i in range(200)]
    boto, wire = _both(
        strict_firehose, strict_firehose_client, firehose_stream, records, record_failure_rate=0.3
    )
    assert wire == boto
    failed, entries = wire[1]
    assert 0 < failed < len(records)
    assert len(entries) == len(records)
    assert sum(1 for code, _, _ in entries if code) == failed
    assert {code for code, _, _ in entries if code} == {
        "ServiceUnavailableException",
        "InternalFailure",
    }
    assert all(has_id for code, _, has_id in entries if not code)


def test_success_stores_exactly_the_records(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    records = RECORD_SETS[1] + RECORD_SETS[2]
    answer = _wire(strict_firehose_client).put_record_batch(firehose_stream, records[:500])
    assert answer["FailedPutCount"] == 0 and len(answer["RequestResponses"]) == 500
    assert strict_firehose.records(firehose_stream) == records[:500]


def test_transport_errors_are_the_senders_transport_errors(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(drop_before_store_rate=1.0)
    with pytest.raises(TRANSPORT_ERRORS):
        _wire(strict_firehose_client).put_record_batch(firehose_stream, [b"a"])
    closed = make_firehose_client(
        region="us-east-1", endpoint_url="http://127.0.0.1:9", connect_timeout_s=1
    )
    with pytest.raises(EndpointConnectionError):
        _wire(closed).put_record_batch(firehose_stream, [b"a"])


def test_sender_over_the_wire_path_counts_like_before(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    strict_firehose.configure(record_failure_rate=0.2, throttle_rate=0.2)
    records = [b'{"n": %d}' % i for i in range(2_000)]
    with FirehoseSender(strict_firehose_client, firehose_stream, seed=1) as sender:
        assert sender._wire is not None
        assert sender.submit(records).result(timeout=60) == len(records)
    assert sorted(strict_firehose.records(firehose_stream)) == sorted(records)
    stats = sender.stats.snapshot()
    assert stats["records_sent"] == len(records)
    assert stats["throttled_calls"] == strict_firehose.stream_counters(firehose_stream)["throttled"]


# -- moto server accepts the requests; settings the path cannot honour fall back ------------------


def test_moto_server_accepts_the_wire_requests(moto_firehose_stream: StreamHandle) -> None:
    client = make_firehose_client(
        region=moto_firehose_stream.region, endpoint_url=moto_firehose_stream.endpoint_url
    )
    ids = [str(uuid.uuid4()) for _ in range(50)]
    payloads = [
        json.dumps(
            {
                "action_name": "billing_usage",
                "request": {"time": "2026-11-01T12:00:00.000Z"},
                "transaction_id": tid,
                "company_id": "cmp_1",
            }
        ).encode()
        for tid in ids
    ]
    answer = _wire(client).put_record_batch(moto_firehose_stream.stream, payloads)
    assert answer["FailedPutCount"] == 0
    assert len(answer["RequestResponses"]) == 50
    assert moto_firehose_stream.receiver.transaction_ids() == set(ids)


def test_settings_it_cannot_honour_fall_back_to_boto3(
    strict_firehose: StrictFirehose, caplog: pytest.LogCaptureFixture
) -> None:
    url = strict_firehose.endpoint_url
    stubbed = make_firehose_client(region="us-east-1", endpoint_url=url)
    stubbed.meta.events.register(
        "before-call.firehose.PutRecordBatch", lambda **_: None, unique_id="test-hook"
    )
    # A botocore Stubber's handlers live in botocore's own package, yet change what a call does.
    with_stubber = make_firehose_client(region="us-east-1", endpoint_url=url)
    Stubber(with_stubber).activate()
    fips = boto3.client("firehose", region_name="us-east-1", config=Config(use_fips_endpoint=True))
    s3 = boto3.client("s3", region_name="us-east-1")
    with caplog.at_level("INFO", logger="connectors.firehose_wire"):
        assert WirePutRecordBatch.for_client(stubbed) is None
        assert WirePutRecordBatch.for_client(with_stubber) is None
        assert WirePutRecordBatch.for_client(fips) is None
        assert WirePutRecordBatch.for_client(s3) is None
        assert WirePutRecordBatch.for_client(object()) is None
    text = caplog.text
    assert "custom before-call handlers" in text
    assert "FIPS" in text
    assert "testing-secret-key" not in text
    assert WirePutRecordBatch.for_client(make_firehose_client(region="us-east-1", endpoint_url=url))


def test_standin_answer_is_the_json_botocore_expects(
    strict_firehose: StrictFirehose, strict_firehose_client: Any, firehose_stream: str
) -> None:
    """The stand-in's fast, pre-serialised success answer: same JSON as json.dumps would give,
    unique RecordIds across calls, and botocore's own parser reads it."""
    status, body = strict_firehose.handle_api(
        "Firehose_20150804.PutRecordBatch",
        WirePutRecordBatch.body(firehose_stream, [b"a"] * 3),
        True,
    )
    assert status == 200
    parsed = json.loads(body)
    assert json.dumps(parsed).encode() == body
    assert parsed["FailedPutCount"] == 0 and parsed["Encrypted"] is False
    answer = strict_firehose_client.put_record_batch(
        DeliveryStreamName=firehose_stream, Records=[{"Data": b"b"}] * 500
    )
    ids = [e["RecordId"] for e in parsed["RequestResponses"] + answer["RequestResponses"]]
    assert len(ids) == len(set(ids)) == 503


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/",
        "https://vpce.example.com/prefix",
        "https://h/p/",
    ],
)
def test_request_url_is_botocores(endpoint: str) -> None:
    client = boto3.client("firehose", region_name="us-east-1", endpoint_url=endpoint)
    urls: list[str] = []

    class Stop(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        urls.append(request.url)
        raise Stop

    client.meta.events.register("before-send.firehose.PutRecordBatch", capture)
    with pytest.raises(Stop):
        client.put_record_batch(DeliveryStreamName="s", Records=[{"Data": b"a"}])
    assert request_url(client.meta.endpoint_url) == urls[0]
