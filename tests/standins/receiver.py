"""A local stand-in for Moesif's Firehose HTTP endpoint (``/v1/partners/aws/kinesis/actions``).

`FirehoseReceiver` is a small threaded HTTP server on 127.0.0.1 that speaks the Amazon Data
Firehose *HTTP endpoint delivery* protocol and checks every record as a Moesif action. It is
what moto's Firehose (see `moto_firehose`) delivers to in the demo and the tests, and it can be
driven directly (POST a delivery body yourself) to test the protocol details moto never uses.

Protocol, as the receiver implements it
---------------------------------------
``POST <any path>`` with the JSON body
``{"requestId": str, "timestamp": int, "records": [{"data": <base64>}, ...]}``.

* ``Content-Encoding: gzip`` bodies are decompressed (bounded); ``identity``/absent is plain.
* ``X-Amz-Firehose-Access-Key``: when the receiver was given an ``access_key`` and the header is
  present, it must match (constant-time compare) or the answer is 401. A *missing* header is
  accepted unless ``require_access_key=True``, because moto sends no such header.
* Success: HTTP 200 ``{"requestId": <same>, "timestamp": <ms>}``. A body that is not a delivery
  request: HTTP 400 with ``errorMessage``; access key mismatch: 401; body too large: 413
  (Firehose treats 413 as permanent). Invalid *records* do not fail the request (the real
  endpoint accepts the batch); they are counted as invalid and the first few are kept as samples.
* Each record must decode (base64, UTF-8, JSON) to exactly ONE JSON object that is a Moesif
  action: string ``action_name``; object ``request`` with an ISO 8601 string ``time``; and
  ``transaction_id`` a 36-character lowercase UUID. Optional ``company_id``, ``user_id``,
  ``subscription_id``, ``session_token`` must be strings and ``metadata`` an object when present.
  A record holding several newline-separated actions, or a JSON array, is invalid (one action
  per record). Trailing whitespace after the single object is tolerated. Records larger than
  1,024,000 bytes (the Firehose record limit) are invalid.

Read-only HTTP views, for a separate process: ``GET /stats`` (JSON, same as `stats()`),
``GET /transaction_ids`` (newline-separated, sorted), ``GET /healthz``; ``DELETE /stats`` resets.

What moto 5.2's Firehose actually sends (read from moto/firehose/models.py
``put_http_records`` and observed on the wire with moto 5.2.1)
------------------------------------------------------------------------------------
* Delivery is synchronous, inside the PutRecord/PutRecordBatch call: exactly one POST per call
  carrying all of that call's records, before the API answers. No buffering (BufferingHints are
  stored and ignored), no batching across calls, so once ``put_record_batch`` returns the
  receiver's counts are final.
* Body: same shape as the real protocol, but ``timestamp`` is in SECONDS (``int(time())``), not
  milliseconds, and ``requestId`` is a fresh uuid4 per call. The receiver accepts any integer
  timestamp (it only echoes ``requestId``).
* Headers: only ``Content-Type: application/json`` (plus the usual python-requests headers). No
  ``X-Amz-Firehose-Protocol-Version``, ``-Request-Id``, ``-Access-Key``, ``-Common-Attributes``
  or ``-Source-Arn``; the configured AccessKey is never sent.
* No gzip: ``RequestConfiguration.ContentEncoding = GZIP`` is stored and ignored.
* The endpoint's response is ignored: 401/400/500 still yield ``FailedPutCount: 0`` and a
  RecordId for every record, and nothing goes to the S3 backup bucket. No retries.
* Only a connection error fails the call: moto answers HTTP 500 (botocore then retries the whole
  call, by default twice). Record data that is not valid UTF-8 (e.g. a gzipped record) also makes
  moto answer 500 (it decodes the bytes as UTF-8 before base64-encoding them again).
* No limits: more than 500 records per call and records over 1,000 KiB are accepted and
  delivered; ``requests.post`` is called without a timeout.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import threading
import time
import zlib
from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.standins.lifecycle import StartStop, serve_in_thread, stop_serving

__all__ = [
    "ACCESS_KEY_HEADER",
    "MAX_RECORD_BYTES",
    "FirehoseReceiver",
    "validate_action",
]

ACCESS_KEY_HEADER = "X-Amz-Firehose-Access-Key"
REQUEST_ID_HEADER = "X-Amz-Firehose-Request-Id"
#: Firehose's per-record limit (1,000 KiB before base64); Moesif's own limit is 1 MB per event.
MAX_RECORD_BYTES = 1_024_000
#: Largest request body accepted, after decompression (64 MB buffer, base64, JSON overhead).
MAX_BODY_BYTES = 96 * 1024 * 1024
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OPTIONAL_STRING_FIELDS = ("company_id", "user_id", "subscription_id", "session_token")


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def validate_action(action: Any) -> str | None:
    """Return why ``action`` is not a valid Moesif action for this project, or None if it is."""
    if not isinstance(action, dict):
        return f"record is a JSON {type(action).__name__}, not one action object"
    name = action.get("action_name")
    if not isinstance(name, str) or not name:
        return "action_name missing or not a non-empty string"
    request = action.get("request")
    if not isinstance(request, dict):
        return "request missing or not an object"
    when = request.get("time")
    if not isinstance(when, str):
        return "request.time missing or not a string"
    try:
        datetime.fromisoformat(when)
    except ValueError:
        return f"request.time is not ISO 8601: {when[:40]!r}"
    tid = action.get("transaction_id")
    if not isinstance(tid, str) or not _UUID_RE.fullmatch(tid):
        shown = repr(tid)[:50]
        return f"transaction_id missing or not a 36-char lowercase UUID: {shown}"
    for field in _OPTIONAL_STRING_FIELDS:
        if field in action and not isinstance(action[field], str):
            return f"{field} is not a string"
    if "metadata" in action and not isinstance(action["metadata"], dict):
        return "metadata is not an object"
    return None


def _load_record(record: Any) -> Any:
    """Decode one delivery record's data to JSON; raise ValueError saying why it cannot be."""
    if not isinstance(record, dict) or not isinstance(record.get("data"), str):
        raise ValueError("not an object with a string 'data'")
    try:
        raw = base64.b64decode(record["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data is not valid base64") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"{len(raw)} bytes exceeds the {MAX_RECORD_BYTES} limit")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("data is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not one JSON object ({exc.msg} at char {exc.pos})") from None


def _decode_record(index: int, record: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one delivery record into an action, or say why it is invalid."""
    try:
        action = _load_record(record)
    except ValueError as exc:
        return None, f"record {index}: {exc}"
    problem = validate_action(action)
    if problem is not None:
        return None, f"record {index}: {problem}"
    return action, None


def _gunzip(body: bytes) -> bytes:
    decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decomp.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"body is not valid gzip: {exc}") from exc
    if len(out) > MAX_BODY_BYTES or decomp.unconsumed_tail:
        raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "decompressed body too large")
    if not decomp.eof:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "body is truncated gzip")
    return out


def _parse_delivery(body: bytes) -> tuple[str, int, list[Any]]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "body is not a JSON object")
    request_id = doc.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "requestId missing or not a string")
    timestamp = doc.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "timestamp missing or not an integer", request_id)
    records = doc.get("records")
    if not isinstance(records, list):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "records missing or not a list", request_id)
    return request_id, timestamp, records


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: FirehoseReceiver) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "FirehoseReceiver/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log (tests and the demo would drown in it)."""

    # -- helpers -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, doc: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError as exc:
            self.close_connection = True
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length") from exc
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        return self.rfile.read(length)

    # -- verbs ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/stats":
            self._send_json(HTTPStatus.OK, owner.stats())
        elif path == "/transaction_ids":
            ids = sorted(owner.transaction_ids())
            text = "".join(f"{tid}\n" for tid in ids)
            self._send(HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"errorMessage": "not found"})

    def do_DELETE(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") == "/stats":
            self.server.owner.reset()
            self._send_json(HTTPStatus.OK, {"reset": True})
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"errorMessage": "not found"})

    def do_POST(self) -> None:
        owner = self.server.owner
        header_request_id = self.headers.get(REQUEST_ID_HEADER)
        try:
            body = self._read_body()
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding == "gzip":
                body = _gunzip(body)
            elif encoding != "identity":
                message = f"unsupported Content-Encoding {encoding}"
                raise _BadRequest(HTTPStatus.BAD_REQUEST, message)
            request_id, timestamp, records = _parse_delivery(body)
            owner._check_access_key(self.headers.get(ACCESS_KEY_HEADER), request_id)
        except _BadRequest as exc:
            rid = exc.request_id or header_request_id or ""
            owner._count_rejected(exc.status, exc.message)
            self._send_json(
                exc.status, {"requestId": rid, "timestamp": _now_ms(), "errorMessage": exc.message}
            )
            return
        owner._ingest(
            records,
            {
                "path": self.path,
                "request_id": request_id,
                "timestamp": timestamp,
                "header_request_id": header_request_id,
                "content_encoding": encoding,
                "access_key_header": self.headers.get(ACCESS_KEY_HEADER) is not None,
                "protocol_version": self.headers.get("X-Amz-Firehose-Protocol-Version"),
                "records": len(records),
            },
        )
        self._send_json(HTTPStatus.OK, {"requestId": request_id, "timestamp": _now_ms()})


class FirehoseReceiver(StartStop):
    """Threaded stand-in for a Firehose HTTP endpoint that counts Moesif actions.

    Thread-safe; every accessor returns a copy. ``url`` is the base URL
    (``http://127.0.0.1:<port>``); deliveries may go to any path under it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_key: str | None = None,
        require_access_key: bool = False,
        max_actions: int = 100_000,
        max_error_samples: int = 20,
        max_request_log: int = 1_000,
    ) -> None:
        self._host = host
        self._port = port
        self._access_key = access_key
        self._require_access_key = require_access_key
        self._max_actions = max_actions
        self._max_error_samples = max_error_samples
        self._max_request_log = max_request_log
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._init_counters()

    def __repr__(self) -> str:  # never show the access key
        return f"FirehoseReceiver(url={self.url if self._server else None!r})"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), self)
        self._server, self._thread = server, serve_in_thread(server, "firehose-receiver")
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        stop_serving(server, thread)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FirehoseReceiver is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- state ---------------------------------------------------------------------------
    def _init_counters(self) -> None:
        self._requests = 0
        self._rejected: dict[int, int] = {}
        self._records = 0
        self._valid = 0
        self._invalid = 0
        self._tid_total = 0
        self._tids: set[str] = set()
        self._actions: list[dict[str, Any]] = []
        self._actions_dropped = 0
        self._errors: list[str] = []
        self._request_log: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget everything received so far (the server keeps running)."""
        with self._lock:
            self._init_counters()

    def _check_access_key(self, presented: str | None, request_id: str) -> None:
        if self._access_key is None:
            return
        if presented is None:
            if self._require_access_key:
                raise _BadRequest(HTTPStatus.UNAUTHORIZED, "access key missing", request_id)
            return
        if not hmac.compare_digest(presented.encode(), self._access_key.encode()):
            raise _BadRequest(HTTPStatus.UNAUTHORIZED, "access key mismatch", request_id)

    def _count_rejected(self, status: int, message: str) -> None:
        with self._lock:
            self._requests += 1
            self._rejected[int(status)] = self._rejected.get(int(status), 0) + 1
            if len(self._errors) < self._max_error_samples:
                self._errors.append(f"request rejected ({int(status)}): {message}")

    def _ingest(self, records: list[Any], info: dict[str, Any]) -> None:
        decoded = [_decode_record(i, rec) for i, rec in enumerate(records)]
        with self._lock:
            self._requests += 1
            self._records += len(records)
            for action, problem in decoded:
                if action is None:
                    self._invalid += 1
                    if problem is not None and len(self._errors) < self._max_error_samples:
                        self._errors.append(f"request {info['request_id']} {problem}")
                    continue
                self._valid += 1
                self._tid_total += 1
                self._tids.add(action["transaction_id"])
                if len(self._actions) < self._max_actions:
                    self._actions.append(action)
                else:
                    self._actions_dropped += 1
            if len(self._request_log) < self._max_request_log:
                info["received_at_ms"] = _now_ms()
                self._request_log.append(info)

    # -- accessors -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts so far: ``records`` = ``valid`` + ``invalid``; ``duplicates`` = valid
        transaction ids seen minus ``unique_transaction_ids``; ``requests`` counts every POST,
        ``rejected_requests`` those answered with a non-200 status (by status code)."""
        with self._lock:
            return {
                "requests": self._requests,
                "rejected_requests": {str(k): v for k, v in sorted(self._rejected.items())},
                "records": self._records,
                "valid": self._valid,
                "invalid": self._invalid,
                "unique_transaction_ids": len(self._tids),
                "duplicates": self._tid_total - len(self._tids),
                "actions_kept": len(self._actions),
                "actions_dropped": self._actions_dropped,
                "errors": list(self._errors),
            }

    def transaction_ids(self) -> set[str]:
        with self._lock:
            return set(self._tids)

    def actions(self) -> list[dict[str, Any]]:
        """Valid actions in arrival order, at most ``max_actions`` (later ones are counted only)."""
        with self._lock:
            return list(self._actions)

    def request_log(self) -> list[dict[str, Any]]:
        """One entry per accepted POST (bounded): path, body requestId and timestamp, header
        request id, content encoding, protocol version header, whether an access-key header
        came (never its value), record count, arrival time in ms."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    def wait_for_records(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` records arrived (for asynchronous senders)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._records >= n:
                    return True
            time.sleep(0.02)
        with self._lock:
            return self._records >= n
