"""A strict local stand-in for the Amazon Data Firehose *producer* API (Direct PUT).

`StrictFirehose` is a real HTTP server on 127.0.0.1 (``ThreadingHTTPServer`` in a daemon thread)
that speaks the Firehose JSON 1.1 protocol exactly as boto3 sends it, enforces the limits that
moto does not, and injects faults on demand so the sender's retry logic can be tested end to
end with a real boto3 client.

Protocol, as implemented
------------------------
``POST /`` with ``X-Amz-Target: Firehose_20150804.<Op>`` and a JSON body. The request must carry
an ``Authorization`` header (boto3 always signs); the signature itself is not checked. Answers
are ``application/x-amz-json-1.1``; errors are ``{"__type": <Code>, "message": ...}`` so botocore
raises ``ClientError`` with that code. Operations: CreateDeliveryStream, DescribeDeliveryStream,
ListDeliveryStreams, DeleteDeliveryStream, PutRecord, PutRecordBatch.

Limits (PutRecordBatch / PutRecord), checked on the *decoded* record data:

* more than 500 records → 400 ``ValidationException`` ("1 validation error detected: ... Member
  must have length less than or equal to 500"); this is the model constraint (``max: 500`` in the
  botocore model, which botocore itself does not check client-side). Real services report model
  constraint violations as ``ValidationException`` with that sentence.
* a record over 1,024,000 bytes → 400 ``ValidationException`` (same form; the wording matches
  real Firehose error messages quoted in public bug reports).
* more than 4 MiB (4 * 1024 * 1024 bytes) of data in one call → 400 ``InvalidArgumentException``
  (the exact code AWS uses for this case is *unconfirmed*).
* unknown (or deleted) stream → 400 ``ResourceNotFoundException``; a stream whose source is a
  Kinesis data stream → 400 ``InvalidArgumentException`` (no direct PUT).

Faults (`Faults`, set with `StrictFirehose.configure` or ``POST /_strict/faults``) apply to
PutRecord/PutRecordBatch only, and are drawn from one ``random.Random(seed)`` in a fixed order
per call (throttle, server error, drop before store, per-record failures, drop after store,
bad answer, latency spike), so a single-threaded client sees the same faults on every run.
With several client threads the interleaving, hence the outcome per call, varies.

* ``throttle_rate``: whole call → ``ServiceUnavailableException`` (HTTP ``throttle_http_status``,
  400 by default), nothing stored.
* ``server_error_rate``: whole call → HTTP 500 ``InternalFailure``, or (one time in two) HTTP 503
  with a non-JSON body as a load balancer would send (botocore then reports code ``"503"``).
  Nothing stored.
* ``drop_before_store_rate``: the connection is closed without an answer, nothing stored.
* ``record_failure_rate``: each record fails independently; its ``RequestResponses`` entry holds
  ``ErrorCode`` and ``ErrorMessage`` instead of ``RecordId``, ``FailedPutCount`` counts them,
  failed records are not stored. The code is ``record_failure_code`` when set
  (``ServiceUnavailableException``: the stream's throughput exceeded, or ``InternalFailure``),
  else ``ServiceUnavailableException`` for even and ``InternalFailure`` for odd indexes.
* ``drop_after_store_rate``: the accepted records ARE stored, then the connection is closed
  without an answer: the client sees a connection error, resends, and duplicates appear.
* ``bad_answer_rate`` (PutRecordBatch only): the call is processed as usual, then its HTTP 200
  answer is replaced by one that does not acknowledge each record, as a proxy or gateway in
  between might send (counted in ``bad_answers``); ``bad_answer`` says which:
  ``"empty"``: ``{}`` (every accepted record stored); ``"short"``: the last
  ``RequestResponses`` entry missing (every accepted record stored); ``"miscounted"``: the last
  record fails with ``InternalFailure`` and is NOT stored, while ``FailedPutCount`` leaves it
  out (``0`` when no other record failed). A client that takes any of these for an
  acknowledgement loses records or cannot tell which were stored.
* ``latency_s`` always, plus ``latency_spike_s`` with probability ``latency_spike_rate``: sleep
  before answering.
* ``delete_stream_after_calls``: the stream is deleted after that many successful put calls
  (counted per stream from the moment this is configured); later calls get
  ``ResourceNotFoundException``. Records stored before remain readable through `records`.
* ``auth_error``: every API call (control plane too) answers HTTP 400 with this code, e.g.
  ``"UnrecognizedClientException"`` or ``"AccessDeniedException"``, to test credential errors.
* ``quota_records_per_second`` / ``quota_mib_per_second`` (0: no quota): the Direct PUT
  throughput quota, enforced PER STREAM as real Firehose does, over the records and the decoded
  data bytes of PutRecord and PutRecordBatch calls together. Model: one token bucket per stream
  and dimension, refilled continuously at the quota rate, holding at most ``QUOTA_BURST_S`` (1 s)
  of it, full when the quota is set (or the stream first used). A call fits if every bucket
  holds its records/bytes (a call larger than a whole bucket fits only a full one, which it
  then overdraws); a call that does not fit is refused WHOLE with ``ServiceUnavailableException``
  ("Slow down.", HTTP ``throttle_http_status``), nothing stored and no token taken, counted in
  the stream's ``throttled`` and ``quota_throttled`` counters. The quota is checked after the
  request limits and before the random faults. Real Firehose states its quotas per second; how
  it measures them (window, burst) is *unconfirmed*: this bucket is the stand-in's choice.
  Setting either quota refills every stream's buckets.

Python API: ``StrictFirehose(seed=0).start()`` (or ``with StrictFirehose() as fh``),
``.endpoint_url``, ``.create_stream(name)``, ``.configure(**faults)``, ``.reset_faults()``,
``.reseed(seed)``, ``.faults``, ``.records(stream)``, ``.transaction_ids(stream)``,
``.counters`` (whole server), ``.stream_counters(stream)`` (put calls naming that stream:
``put_calls``, ``records_received``, ``records_stored``, ``failed_records``,
``throttled_records`` (failed with ``ServiceUnavailableException``), ``throttled``,
``quota_throttled``, ``server_errors``, ``dropped*``, ``bad_answers``, ``invalid_requests``,
``max_batch_records``, ``max_batch_bytes``), ``.stats()`` (both, and the ``quota``), ``.stop()``.

Control API for another process
-------------------------------
``GET /_strict/records?stream=NAME`` (NDJSON: one record per line, a trailing newline of the
record is not doubled; add ``&format=b64`` for ``{"data": <base64>}`` lines when records may
contain newlines or are not UTF-8), ``GET /_strict/transaction_ids?stream=NAME`` (JSON list),
``GET /_strict/stats`` (JSON: counters and per-stream record counts), ``GET /_strict/faults``,
``POST /_strict/faults`` (JSON object of fault settings; ``"reset": true`` clears the others
first), ``POST /_strict/streams`` (``{"name": NAME}``: create a stream).

CLI: ``python -m tests.standins.strict_firehose --port P --stream NAME [--seed S]
[--throttle-rate R ...]`` prints its endpoint URL and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins.lifecycle import StartStop, serve_in_thread, stop_serving

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 4 * 1024 * 1024
MAX_RECORD_BYTES = 1_024_000
TARGET_PREFIX = "Firehose_20150804."
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"

_RATE_FIELDS = (
    "record_failure_rate",
    "throttle_rate",
    "server_error_rate",
    "drop_after_store_rate",
    "drop_before_store_rate",
    "bad_answer_rate",
    "latency_spike_rate",
)
RECORD_FAILURE_CODES = ("ServiceUnavailableException", "InternalFailure")
BAD_ANSWERS = ("empty", "short", "miscounted")


@dataclasses.dataclass
class Faults:
    """Fault settings; every rate is a probability in [0, 1]."""

    record_failure_rate: float = 0.0
    record_failure_code: str | None = None  # None: alternate (see the module docstring)
    throttle_rate: float = 0.0
    throttle_http_status: int = 400
    server_error_rate: float = 0.0
    drop_after_store_rate: float = 0.0
    drop_before_store_rate: float = 0.0
    bad_answer_rate: float = 0.0
    bad_answer: str = "empty"  # one of BAD_ANSWERS
    latency_s: float = 0.0
    latency_spike_rate: float = 0.0
    latency_spike_s: float = 0.0
    delete_stream_after_calls: int | None = None
    auth_error: str | None = None
    quota_records_per_second: float = 0.0  # per stream; 0: no quota
    quota_mib_per_second: float = 0.0  # per stream, MiB (1,048,576 bytes) of data; 0: no quota

    def validate(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.latency_s < 0 or self.latency_spike_s < 0:
            raise ValueError("latencies must not be negative")
        if self.delete_stream_after_calls is not None and self.delete_stream_after_calls < 0:
            raise ValueError("delete_stream_after_calls must be >= 0")
        if self.quota_records_per_second < 0 or self.quota_mib_per_second < 0:
            raise ValueError("quotas must not be negative (0 means no quota)")
        if self.record_failure_code not in (None, *RECORD_FAILURE_CODES):
            raise ValueError(
                f"record_failure_code must be one of {RECORD_FAILURE_CODES} or None, "
                f"got {self.record_failure_code!r}"
            )
        if self.bad_answer not in BAD_ANSWERS:
            raise ValueError(f"bad_answer must be one of {BAD_ANSWERS}, got {self.bad_answer!r}")


_FAULT_NAMES = frozenset(f.name for f in dataclasses.fields(Faults))

_COUNTER_NAMES = (
    "calls",
    "put_calls",
    "records_received",
    "records_stored",
    "bytes_stored",
    "failed_records",
    "throttled_records",
    "throttled",
    "quota_throttled",
    "server_errors",
    "dropped",
    "dropped_before_store",
    "dropped_after_store",
    "bad_answers",
    "invalid_requests",
    "not_found",
    "auth_errors",
    "latency_spikes",
    "streams_deleted_by_fault",
    "max_batch_records",
    "max_batch_bytes",
)


# Counted per stream as well (for put calls that named an existing stream).
_STREAM_COUNTER_NAMES = (
    "put_calls",
    "records_received",
    "records_stored",
    "bytes_stored",
    "failed_records",
    "throttled_records",
    "throttled",
    "quota_throttled",
    "server_errors",
    "dropped",
    "dropped_before_store",
    "dropped_after_store",
    "bad_answers",
    "invalid_requests",
    "max_batch_records",
    "max_batch_bytes",
)


class ApiError(Exception):
    """An error answer: HTTP status, ``__type`` code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _Drop(Exception):
    """Close the connection without answering."""


class _Serialized(bytes):
    """An operation's answer already serialised as JSON."""


@dataclasses.dataclass
class _Stream:
    name: str
    arn: str
    stream_type: str
    created: float
    records: list[bytes] = dataclasses.field(default_factory=list)
    deleted: bool = False
    successful_puts: int = 0
    counters: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(_STREAM_COUNTER_NAMES, 0)
    )


QUOTA_BURST_S = 1.0  # a quota bucket holds this many seconds of its rate
MIB = 1024 * 1024


@dataclasses.dataclass
class _QuotaBucket:
    """One stream's allowance in one dimension (records or data bytes): a token bucket.

    Refills at `rate` per second up to `rate * QUOTA_BURST_S`; starts full.
    """

    rate: float
    tokens: float
    last: float

    def refill(self, now: float) -> None:
        capacity = self.rate * QUOTA_BURST_S
        self.tokens = min(capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def fits(self, amount: float) -> bool:
        """Room for *amount* now; a call larger than the whole bucket fits a full bucket."""
        return self.tokens >= amount or self.tokens >= self.rate * QUOTA_BURST_S


@dataclasses.dataclass
class _Decision:
    throttle: bool = False
    server_error: int = 0  # 0, 500 or 503
    drop_before: bool = False
    failed: frozenset[int] = frozenset()
    drop_after: bool = False
    bad_answer: bool = False
    sleep_s: float = 0.0


class StrictFirehose(StartStop):
    """Local Firehose endpoint that enforces the real limits and injects seeded faults."""

    def __init__(
        self,
        seed: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        account_id: str = "123456789012",
    ) -> None:
        self._host = host
        self._port = port
        self.region = region
        self.account_id = account_id
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults = Faults()
        self._streams: dict[str, _Stream] = {}
        self._counters: dict[str, int] = dict.fromkeys(_COUNTER_NAMES, 0)
        self._record_ids = itertools.count(1)
        self._quota_buckets: dict[tuple[str, str], _QuotaBucket] = {}  # (stream, dimension)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> StrictFirehose:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.owner = self
        self._server = server
        self._thread = serve_in_thread(server, "strict-firehose")
        logger.debug("strict Firehose listening on %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        stop_serving(server, self._thread, server.close_all_connections)
        self._thread = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("StrictFirehose is not started")
        return f"http://{self._host}:{self._server.server_port}"

    # -- Python API ------------------------------------------------------------------------------

    def create_stream(self, name: str, *, stream_type: str = "DirectPut") -> None:
        """Create a stream (re-creating a deleted one starts it empty)."""
        with self._lock:
            self._create_locked(name, stream_type)

    def configure(self, **faults: Any) -> None:
        """Change fault settings (see `Faults`); unnamed settings keep their value."""
        unknown = set(faults) - _FAULT_NAMES
        if unknown:
            raise TypeError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        with self._lock:
            new = dataclasses.replace(self._faults, **faults)
            new.validate()
            self._faults = new
            if "delete_stream_after_calls" in faults:
                for stream in self._streams.values():
                    stream.successful_puts = 0
            if {"quota_records_per_second", "quota_mib_per_second"} & set(faults):
                self._quota_buckets.clear()  # every stream starts with a full bucket

    def reset_faults(self) -> None:
        with self._lock:
            self._faults = Faults()
            self._quota_buckets.clear()

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return dataclasses.replace(self._faults)

    def records(self, stream: str) -> list[bytes]:
        """Stored records of *stream*, decoded, in arrival order (a copy)."""
        with self._lock:
            found = self._streams.get(stream)
            return list(found.records) if found is not None else []

    def transaction_ids(self, stream: str) -> list[str]:
        """``transaction_id`` of every stored record (JSON object, array of objects or NDJSON)."""
        ids: list[str] = []
        for index, record in enumerate(self.records(stream)):
            try:
                actions = _actions_of(record)
            except ValueError as exc:
                raise ValueError(f"record {index} of {stream!r} is not JSON: {exc}") from exc
            for action in actions:
                tid = action.get("transaction_id") if isinstance(action, dict) else None
                if not isinstance(tid, str):
                    raise ValueError(f"record {index} of {stream!r} has no string transaction_id")
                ids.append(tid)
        return ids

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._counters,
                "quota": {
                    "records_per_second": self._faults.quota_records_per_second,
                    "mib_per_second": self._faults.quota_mib_per_second,
                    "burst_s": QUOTA_BURST_S,
                },
                "streams": {
                    name: {"records": len(s.records), "deleted": s.deleted, **s.counters}
                    for name, s in self._streams.items()
                },
            }

    # -- request handling ----------------------------------------------------------------------

    def handle_api(self, target: str, body: bytes, authorized: bool) -> tuple[int, bytes]:
        """Answer one Firehose API request; raises `_Drop` to close without answering."""
        try:
            op = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
            with self._lock:
                self._counters["calls"] += 1
                auth_error = self._faults.auth_error
            if not authorized:
                raise ApiError(
                    400, "MissingAuthenticationTokenException", "Missing Authentication Token"
                )
            if auth_error:
                self._count("auth_errors")
                raise ApiError(400, auth_error, "The request was rejected (simulated).")
            handler = self._ops().get(op)
            if handler is None:
                raise ApiError(400, "UnknownOperationException", f"unknown target {target!r}")
            try:
                request = json.loads(body or b"{}")
            except ValueError as exc:
                raise ApiError(400, "SerializationException", "body is not JSON") from exc
            if not isinstance(request, dict):
                raise ApiError(400, "SerializationException", "body is not a JSON object")
            result = handler(request)
            if isinstance(result, _Serialized):
                return 200, bytes(result)
            return 200, json.dumps(result).encode()
        except ApiError as err:
            if err.status == 400 and err.code in {
                "ValidationException",
                "InvalidArgumentException",
            }:
                self._count("invalid_requests")
            elif err.code == "ResourceNotFoundException":
                self._count("not_found")
            return err.status, _error_body(err)

    def _ops(self) -> dict[str, Any]:
        return {
            "CreateDeliveryStream": self._op_create,
            "DescribeDeliveryStream": self._op_describe,
            "ListDeliveryStreams": self._op_list,
            "DeleteDeliveryStream": self._op_delete,
            "PutRecord": self._op_put_record,
            "PutRecordBatch": self._op_put_record_batch,
        }

    def _count(self, name: str, amount: int = 1, stream: _Stream | None = None) -> None:
        with self._lock:
            self._bump_locked(stream, **{name: amount})

    def _bump_locked(self, stream: _Stream | None, **deltas: int) -> None:
        for name, delta in deltas.items():
            if name.startswith("max_"):
                self._counters[name] = max(self._counters[name], delta)
                if stream is not None:
                    stream.counters[name] = max(stream.counters[name], delta)
                continue
            self._counters[name] += delta
            if stream is not None and name in stream.counters:
                stream.counters[name] += delta

    def stream_counters(self, stream: str) -> dict[str, int]:
        """Counters of put calls to *stream* (zeros for an unknown stream)."""
        with self._lock:
            found = self._streams.get(stream)
            if found is None:
                return dict.fromkeys(_STREAM_COUNTER_NAMES, 0)
            return dict(found.counters)

    def _create_locked(self, name: str, stream_type: str) -> None:
        existing = self._streams.get(name)
        if existing is not None and not existing.deleted:
            raise ApiError(400, "ResourceInUseException", f"Firehose stream {name} already exists")
        arn = f"arn:aws:firehose:{self.region}:{self.account_id}:deliverystream/{name}"
        self._streams[name] = _Stream(name, arn, stream_type, time.time())

    def _live_stream_locked(self, name: object) -> _Stream:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "ValidationException", "DeliveryStreamName is required")
        stream = self._streams.get(name)
        if stream is None or stream.deleted:
            raise ApiError(
                400,
                "ResourceNotFoundException",
                f"Firehose {name} under account {self.account_id} not found.",
            )
        return stream

    def _op_create(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("DeliveryStreamName")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "ValidationException", "DeliveryStreamName is required")
        stream_type = str(request.get("DeliveryStreamType") or "DirectPut")
        with self._lock:
            self._create_locked(name, stream_type)
            return {"DeliveryStreamARN": self._streams[name].arn}

    def _op_describe(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            stream = self._live_stream_locked(request.get("DeliveryStreamName"))
            return {
                "DeliveryStreamDescription": {
                    "DeliveryStreamName": stream.name,
                    "DeliveryStreamARN": stream.arn,
                    "DeliveryStreamStatus": "ACTIVE",
                    "DeliveryStreamType": stream.stream_type,
                    "VersionId": "1",
                    "CreateTimestamp": stream.created,
                    "Destinations": [],
                    "HasMoreDestinations": False,
                }
            }

    def _op_list(self, request: dict[str, Any]) -> dict[str, Any]:
        limit = int(request.get("Limit") or 10)
        start = request.get("ExclusiveStartDeliveryStreamName")
        wanted_type = request.get("DeliveryStreamType")
        with self._lock:
            names = sorted(
                s.name
                for s in self._streams.values()
                if not s.deleted and (wanted_type is None or s.stream_type == wanted_type)
            )
        if isinstance(start, str):
            names = [n for n in names if n > start]
        return {"DeliveryStreamNames": names[:limit], "HasMoreDeliveryStreams": len(names) > limit}

    def _op_delete(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._live_stream_locked(request.get("DeliveryStreamName")).deleted = True
        return {}

    def _op_put_record(self, request: dict[str, Any]) -> dict[str, Any]:
        record = request.get("Record")
        if not isinstance(record, dict):
            raise ApiError(400, "ValidationException", "Record is required")
        result = self._put(request.get("DeliveryStreamName"), [record], single=True)
        assert isinstance(result, dict)  # not serialized=True
        return {"RecordId": result["RequestResponses"][0]["RecordId"], "Encrypted": False}

    def _op_put_record_batch(self, request: dict[str, Any]) -> dict[str, Any] | _Serialized:
        records = request.get("Records")
        if not isinstance(records, list) or not records:
            raise ApiError(400, "ValidationException", "Records must hold at least one record")
        return self._put(request.get("DeliveryStreamName"), records, single=False, serialized=True)

    def _put(
        self, name: object, raw: list[Any], *, single: bool, serialized: bool = False
    ) -> dict[str, Any] | _Serialized:
        """The answer as a dict, or (*serialized*, no record failed) as JSON `_Serialized`."""
        stream, data = self._accept_put(name, raw)
        self._enforce_quota(stream, data)
        with self._lock:
            faults = self._faults
            decision = self._decide_locked(faults, len(data))
        if decision.sleep_s:
            time.sleep(decision.sleep_s)
        self._fail_whole_call(stream, decision, faults, single=single)
        bad = faults.bad_answer if decision.bad_answer and not single else None
        failed = decision.failed
        if bad == "miscounted":
            failed = failed | {len(data) - 1}
        codes = {i: faults.record_failure_code or RECORD_FAILURE_CODES[i % 2] for i in failed}
        if bad == "miscounted":
            codes[len(data) - 1] = "InternalFailure"
        kept = [r for i, r in enumerate(data) if i not in failed] if failed else data
        call = self._store(stream, kept, faults, failed=len(failed))
        throttled = sum(1 for code in codes.values() if code == "ServiceUnavailableException")
        if throttled:
            self._count("throttled_records", throttled, stream=stream)
        if decision.drop_after:
            with self._lock:
                self._bump_locked(stream, dropped=1, dropped_after_store=1)
            raise _Drop
        if bad is not None:
            self._count("bad_answers", stream=stream)
            if bad == "empty":
                return {}
        # RecordIds: unique per stored record (this call's sequence number + the index).
        prefix = f"{call:024x}"
        suffixes = _ID_SUFFIXES[: len(data)]
        if serialized and not failed and bad is None:
            # Exactly json.dumps of the dict below, with one join instead of 500 dicts.
            ids = ('"}, {"RecordId": "' + prefix).join(suffixes)
            return _Serialized(
                f'{{"FailedPutCount": 0, "Encrypted": false, "RequestResponses": '
                f'[{{"RecordId": "{prefix}{ids}"}}]}}'.encode()
            )
        responses: list[dict[str, str]] = [{"RecordId": prefix + suffix} for suffix in suffixes]
        for index, code in codes.items():
            responses[index] = {"ErrorCode": code, "ErrorMessage": _FAILURE_MESSAGES[code]}
        failed_put_count = len(failed)
        if bad == "short":
            responses = responses[:-1]
        elif bad == "miscounted":
            failed_put_count -= 1
        return {
            "FailedPutCount": failed_put_count,
            "Encrypted": False,
            "RequestResponses": responses,
        }

    def _accept_put(self, name: object, raw: list[Any]) -> tuple[_Stream, list[bytes]]:
        """Decode and validate a put request: the stream and the decoded records."""
        data = _decode_records(raw)
        total = sum(map(len, data))
        with self._lock:
            found = self._streams.get(name) if isinstance(name, str) else None
            known = found if found is not None and not found.deleted else None
            self._bump_locked(
                known,
                put_calls=1,
                records_received=len(data),
                max_batch_records=len(data),
                max_batch_bytes=total,
            )
            stream = self._live_stream_locked(name)
        try:
            _check_limits(data, total)
            if stream.stream_type != "DirectPut":
                raise ApiError(
                    400,
                    "InvalidArgumentException",
                    f"Firehose stream {stream.name} has a {stream.stream_type} source; "
                    "direct PUT is not allowed.",
                )
        except ApiError:
            with self._lock:
                stream.counters["invalid_requests"] += 1
            raise
        return stream, data

    def _enforce_quota(self, stream: _Stream, data: list[bytes]) -> None:
        """Refuse the whole call (nothing stored) if it does not fit the stream's quota now."""
        with self._lock:
            faults = self._faults
            dimensions = (
                ("records", faults.quota_records_per_second, len(data)),
                ("bytes", faults.quota_mib_per_second * MIB, sum(len(d) for d in data)),
            )
            now = time.monotonic()
            taken: list[tuple[_QuotaBucket, int]] = []
            for dimension, rate, amount in dimensions:
                if rate <= 0:
                    continue
                bucket = self._quota_buckets.get((stream.name, dimension))
                if bucket is None:
                    bucket = _QuotaBucket(rate, rate * QUOTA_BURST_S, now)
                    self._quota_buckets[(stream.name, dimension)] = bucket
                bucket.refill(now)
                if not bucket.fits(amount):
                    self._bump_locked(stream, throttled=1, quota_throttled=1)
                    break
                taken.append((bucket, amount))
            else:
                for bucket, amount in taken:
                    bucket.tokens -= amount
                return
        raise ApiError(faults.throttle_http_status, "ServiceUnavailableException", "Slow down.")

    def _fail_whole_call(
        self, stream: _Stream, decision: _Decision, faults: Faults, *, single: bool
    ) -> None:
        if decision.throttle:
            self._count("throttled", stream=stream)
            raise ApiError(faults.throttle_http_status, "ServiceUnavailableException", "Slow down.")
        if decision.server_error:
            self._count("server_errors", stream=stream)
            if decision.server_error == 503:
                raise ApiError(503, "", "")
            raise ApiError(500, "InternalFailure", "Internal service failure (simulated).")
        if decision.drop_before:
            with self._lock:
                self._bump_locked(stream, dropped=1, dropped_before_store=1)
            raise _Drop
        if single and decision.failed:  # PutRecord has no per-record answer: the call fails
            self._count("failed_records", stream=stream)
            raise ApiError(faults.throttle_http_status, "ServiceUnavailableException", "Slow down.")

    def _store(self, stream: _Stream, kept: list[bytes], faults: Faults, *, failed: int) -> int:
        """Store *kept*; returns this store's sequence number (for RecordIds)."""
        with self._lock:
            if self._streams.get(stream.name) is not stream or stream.deleted:
                raise ApiError(
                    400,
                    "ResourceNotFoundException",
                    f"Firehose {stream.name} under account {self.account_id} not found.",
                )
            stream.records.extend(kept)
            self._bump_locked(
                stream,
                records_stored=len(kept),
                bytes_stored=sum(map(len, kept)),
                failed_records=failed,
            )
            stream.successful_puts += 1
            limit = faults.delete_stream_after_calls
            if limit is not None and stream.successful_puts >= limit:
                stream.deleted = True
                self._counters["streams_deleted_by_fault"] += 1
            return next(self._record_ids)

    def _decide_locked(self, faults: Faults, count: int) -> _Decision:
        rng = self._rng
        decision = _Decision(sleep_s=faults.latency_s)

        def draw(rate: float) -> bool:
            return rate > 0 and rng.random() < rate

        if draw(faults.throttle_rate):
            decision.throttle = True
        elif draw(faults.server_error_rate):
            decision.server_error = 503 if rng.random() < 0.5 else 500
        elif draw(faults.drop_before_store_rate):
            decision.drop_before = True
        else:
            if faults.record_failure_rate > 0:
                rate = faults.record_failure_rate
                decision.failed = frozenset(i for i in range(count) if rng.random() < rate)
            decision.drop_after = draw(faults.drop_after_store_rate)
            decision.bad_answer = draw(faults.bad_answer_rate)
        if draw(faults.latency_spike_rate):
            decision.sleep_s += faults.latency_spike_s
            self._counters["latency_spikes"] += 1
        return decision

    # -- control API -----------------------------------------------------------------------------

    def handle_control(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """Answer ``/_strict/...``; returns (status, content type, body)."""
        url = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/_strict/records"): self._ctl_records,
            ("GET", "/_strict/transaction_ids"): self._ctl_transaction_ids,
            ("GET", "/_strict/stats"): lambda q, b: ("application/json", self.stats()),
            ("GET", "/_strict/faults"): self._ctl_faults,
            ("POST", "/_strict/faults"): self._ctl_faults,
            ("POST", "/_strict/streams"): self._ctl_create_stream,
        }
        route = routes.get((method, url.path))
        if route is None:
            return 404, "application/json", b'{"error": "not found"}'
        try:
            content_type, payload = route(query, body if method == "POST" else None)
        except ApiError as err:
            return err.status, "application/json", _error_body(err)
        except (TypeError, ValueError) as exc:
            return 400, "application/json", json.dumps({"error": str(exc)}).encode()
        if isinstance(payload, bytes):
            return 200, content_type, payload
        return 200, content_type, json.dumps(payload).encode()

    def _ctl_records(self, query: dict[str, str], body: bytes | None) -> tuple[str, bytes]:
        records = self.records(_required(query, "stream"))
        lines = _ndjson_lines(records, b64=query.get("format") == "b64")
        return "application/x-ndjson", b"".join(lines)

    def _ctl_transaction_ids(self, query: dict[str, str], body: bytes | None) -> tuple[str, Any]:
        return "application/json", self.transaction_ids(_required(query, "stream"))

    def _ctl_faults(self, query: dict[str, str], body: bytes | None) -> tuple[str, Any]:
        if body is not None:
            settings = _json_object(body)
            if settings.pop("reset", False):
                self.reset_faults()
            self.configure(**settings)
        return "application/json", dataclasses.asdict(self.faults)

    def _ctl_create_stream(self, query: dict[str, str], body: bytes | None) -> tuple[str, Any]:
        name = _json_object(body or b"").get("name")
        if not isinstance(name, str) or not name:
            raise ValueError('body must be {"name": <stream name>}')
        self.create_stream(name)
        return "application/json", {"created": name}


# -- helpers -------------------------------------------------------------------------------------


def _error_body(err: ApiError) -> bytes:
    if not err.code:  # a load balancer's 503: not JSON
        return b"<html><body>503 Service Unavailable</body></html>"
    return json.dumps({"__type": err.code, "message": err.message}).encode()


def _decode_records(raw: list[Any]) -> list[bytes]:
    """Decoded ``Data`` of every record; `_decode_records_slowly` names the first bad one."""
    decode = binascii.a2b_base64
    try:
        # JSON gives str, numbers, bools, None, lists or dicts: all but str raise TypeError.
        return [decode(record["Data"], strict_mode=True) for record in raw]
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        pass
    return _decode_records_slowly(raw)


def _decode_records_slowly(raw: list[Any]) -> list[bytes]:
    out: list[bytes] = []
    for index, record in enumerate(raw):
        blob = record.get("Data") if isinstance(record, dict) else None
        if not isinstance(blob, str):
            raise ApiError(
                400, "SerializationException", f"records.{index + 1}.member.data missing"
            )
        try:
            out.append(base64.b64decode(blob, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                400, "SerializationException", f"records.{index + 1}.member.data is not base64"
            ) from exc
    return out


def _check_limits(data: list[bytes], total: int) -> None:
    if len(data) > MAX_RECORDS_PER_CALL:
        raise ApiError(
            400,
            "ValidationException",
            f"1 validation error detected: Value '[...{len(data)} records]' at 'records' failed "
            f"to satisfy constraint: Member must have length less than or equal to "
            f"{MAX_RECORDS_PER_CALL}",
        )
    too_big = (
        [i for i, d in enumerate(data) if len(d) > MAX_RECORD_BYTES]
        if max(map(len, data), default=0) > MAX_RECORD_BYTES
        else []
    )
    if too_big:
        details = "; ".join(
            f"Value 'java.nio.HeapByteBuffer[pos=0 lim={len(data[i])}]' at "
            f"'records.{i + 1}.member.data' failed to satisfy constraint: Member must have "
            f"length less than or equal to {MAX_RECORD_BYTES}"
            for i in too_big[:5]
        )
        raise ApiError(
            400, "ValidationException", f"{len(too_big)} validation error(s) detected: {details}"
        )
    if total > MAX_BYTES_PER_CALL:
        raise ApiError(
            400,
            "InvalidArgumentException",
            f"Records size {total} bytes exceeds the {MAX_BYTES_PER_CALL}-byte (4 MiB) limit "
            "for one PutRecordBatch request.",
        )


def _actions_of(record: bytes) -> list[Any]:
    try:
        parsed = json.loads(record)
    except ValueError:
        return [json.loads(line) for line in record.splitlines() if line.strip()]
    return parsed if isinstance(parsed, list) else [parsed]


def _ndjson_lines(records: list[bytes], *, b64: bool) -> Iterator[bytes]:
    for record in records:
        if b64:
            yield json.dumps({"data": base64.b64encode(record).decode("ascii")}).encode() + b"\n"
        else:
            yield record if record.endswith(b"\n") else record + b"\n"


def _required(query: dict[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise ValueError(f"query parameter {name!r} is required")
    return value


def _json_object(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body or b"{}")
    if not isinstance(parsed, dict):
        raise ValueError("body must be a JSON object")
    return parsed


# -- HTTP plumbing -------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: StrictFirehose

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, dropped connections) are normal here: log quietly."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            logger.debug("strict Firehose: client %s went away: %r", client_address, exc)
            return
        logger.exception("strict Firehose: error handling a request from %s", client_address)

    def close_all_connections(self) -> None:
        """Close kept-alive client connections so no handler thread answers after stop()."""
        with self._connections_lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("strict Firehose: " + format, *args)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            self._send(411, "application/json", b'{"error": "Content-Length required"}')
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        reason = self.responses.get(status, ("",))[0]
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"x-amzn-RequestId: {next(_request_ids):012x}\r\n"
            "\r\n"
        ).encode("latin-1")
        self.wfile.write(head + body)

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        owner = self.server.owner
        if self.path.startswith("/_strict/"):
            self._send(*owner.handle_control("POST", self.path, body))
            return
        try:
            status, payload = owner.handle_api(
                self.headers.get("X-Amz-Target", ""),
                body,
                authorized=bool(self.headers.get("Authorization")),
            )
        except _Drop:
            self.close_connection = True
            return
        content_type = JSON_CONTENT_TYPE if status != 503 else "text/html"
        self._send(status, content_type, payload)

    def do_GET(self) -> None:
        if not self.path.startswith("/_strict/"):
            self._send(404, "application/json", b'{"error": "not found"}')
            return
        self._send(*self.server.owner.handle_control("GET", self.path, b""))


_request_ids = itertools.count(1)
_FAILURE_MESSAGES = {
    "ServiceUnavailableException": "Slow down.",
    "InternalFailure": "Internal service failure.",
}
_ID_SUFFIXES = [f"{i:08x}" for i in range(MAX_RECORDS_PER_CALL + 1)]


# -- CLI -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins.strict_firehose",
        description="Serve a strict local Firehose endpoint until SIGTERM/SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stream", action="append", default=[], help="create this stream")
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(Faults):
        flag = "--" + field.name.replace("_", "-")
        if field.name in {"auth_error", "record_failure_code", "bad_answer"}:
            parser.add_argument(flag, default=None)
        elif field.name in {"delete_stream_after_calls", "throttle_http_status"}:
            parser.add_argument(flag, type=int, default=None)
        else:
            parser.add_argument(flag, type=float, default=None)
    args = parser.parse_args(argv)
    faults = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Faults)
        if getattr(args, f.name) is not None
    }
    server = StrictFirehose(seed=args.seed, host=args.host, port=args.port)
    server.configure(**faults)
    for name in args.stream:
        server.create_stream(name)
    stop = threading.Event()

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with server:
        print(server.endpoint_url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
