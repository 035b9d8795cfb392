"""Sending records to an Amazon Data Firehose stream (Direct PUT) with PutRecordBatch.

`FirehoseSender.submit` splits a chunk of records into calls of at most 500 records and 4 MiB
(`connectors.firehose_batching`), sends them on a thread pool, and resolves the chunk's future
only when EVERY record was acknowledged. The retry loop here is the only one: the boto3 client
from `make_firehose_client` has botocore retries off, so attempts are never multiplied. Each
call goes through `connectors.firehose_wire` (the same signed HTTP request as
``client.put_record_batch``, with a fraction of botocore's CPU per record; the same errors),
or through ``client.put_record_batch`` itself for a client setting that path cannot honour.

Error handling, per PutRecordBatch call:

* ``FailedPutCount > 0``: only the failed records (matched to ``RequestResponses`` by index)
  are resent, after exponential backoff with full jitter.
* ``ServiceUnavailableException`` (or a generic ``ThrottlingException``) for the whole call,
  whatever the HTTP status: throughput exceeded; back off and resend the call.
* HTTP 5xx / ``InternalFailure`` and transport errors (connection refused, closed or reset,
  connect/read timeouts): back off and resend. A dropped connection may have been stored
  already, so resends can duplicate records; Moesif deduplicates on ``transaction_id``.
* Anything else (unknown stream, access denied, bad credentials or signature, invalid request,
  KMS errors, and any unclassified error) raises `PermanentDeliveryError` at once: a blind
  resend of an error we do not understand could duplicate records for nothing.

When a batch runs out of attempts the chunk's future raises `TransientDeliveryError`; nothing
is lost, since the caller checkpoints only acknowledged chunks and a rerun resumes.
Messages and logs never include credentials, request headers or the client configuration.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from connectors.adaptive_rate import AdaptiveRate
from connectors.firehose_batching import (
    BatchFailed,
    ChunkTracker,
    billable_units_total,
    plan_batches,
)
from connectors.firehose_wire import WirePutRecordBatch
from connectors.rate_limit import RateLimiter, RetryPolicy
from moesif_backfill.errors import ConfigError, PermanentDeliveryError

__all__ = [
    "FirehoseSender",
    "RetryPolicy",
    "SendStats",
    "make_firehose_client",
    "redact",
]

logger = logging.getLogger(__name__)

DEFAULT_RETRY = RetryPolicy()  # frozen, so one shared default is safe
# Given limits are shaped to this fraction: client and Firehose measure time differently, and
# the quota's exact measurement is unconfirmed (docs/throughput.md).
SHAPING_MARGIN = 0.98
SHAPING_BURST_S = 0.2  # the client's burst: a fifth of the 1 s a quota is stated over

THROTTLING_CODES = frozenset({"ServiceUnavailableException", "ThrottlingException", "Throttling"})
SERVER_ERROR_CODES = frozenset(
    {"InternalFailure", "InternalFailureException", "InternalServerError", "ServiceFailure"}
)
CREDENTIAL_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)
# Transport failures where the request may or may not have reached Firehose: retried.
# EndpointConnectionError (refused/DNS) and ConnectTimeoutError never reached it.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectTimeoutError,
    HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError, ...
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    ConnectionError,  # builtin: reset/aborted/refused sockets that escaped botocore's wrapping
)
_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b"),
    re.compile(r"(Credential=)[^,\s]+"),
    re.compile(r"(?i)(secret|token|signature)([\"']?\s*[:=]\s*)[^\s,;\"']+"),
)


class SendStats:
    """Thread-safe counters of one sender.

    ``firehose_calls``: PutRecordBatch calls attempted (each retry counts). ``records_sent`` /
    ``bytes_sent``: records and data bytes Firehose acknowledged (a record resent after a
    dropped connection counts each time it was acknowledged). ``records_retried``: record
    resends (a whole-call retry of 500 records adds 500). ``billable_5kb_units``: sum over
    acknowledged records of ceil(len / 5120), at least 1 per record, because Firehose bills
    ingestion per record rounded up to the next 5 KB (taken here as 5 * 1024 bytes).
    """

    FIELDS = (
        "firehose_calls",
        "records_sent",
        "records_retried",
        "throttled_calls",
        "server_errors",
        "connection_errors",
        "bytes_sent",
        "billable_5kb_units",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def __getattr__(self, name: str) -> int:
        if name in SendStats.FIELDS:
            with self._lock:
                return self._values[name]
        raise AttributeError(name)


def make_firehose_client(
    *,
    region: str | None,
    endpoint_url: str | None,
    max_pool_connections: int = 16,
    connect_timeout_s: float = 5,
    read_timeout_s: float = 30,
    session: Any = None,
) -> Any:
    """A boto3 Firehose client with botocore retries OFF and explicit timeouts.

    Credentials come from `session` (e.g. a Prefect AwsCredentials block's boto3 session) or
    else boto3's standard chain (environment, profile, SSO, role...).
    *max_pool_connections* should be at least the sender's ``max_in_flight``.
    """
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    try:
        return (session or boto3.session.Session()).client(
            "firehose", region_name=region, endpoint_url=endpoint_url, config=config
        )
    except NoRegionError as exc:
        raise ConfigError(
            "no AWS region for Firehose: pass a region or set AWS_REGION/AWS_DEFAULT_REGION"
        ) from exc


def redact(text: str, limit: int = 500) -> str:
    """Remove anything that looks like a credential, and bound the length."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "<redacted>", text)
    return text if len(text) <= limit else text[:limit] + "..."


class FirehoseSender:
    """Sends chunks of records to one Firehose stream; see the module docstring."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        *,
        max_in_flight: int = 4,
        max_records_per_second: float | None = None,
        max_mib_per_second: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        adaptive_rate: bool = False,
        lean_wire: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._client = client
        # The same request as client.put_record_batch with far less CPU per record
        # (connectors.firehose_wire); None: plain boto3 calls (a client setting it cannot honour).
        self._wire = WirePutRecordBatch.for_client(client) if lean_wire else None
        self.stream_name = stream_name
        self.retry = retry
        self.stats = SendStats()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        # Shaping (docs/throughput.md): given limits, at SHAPING_MARGIN of them; without
        # limits and with adaptive_rate, unlimited until Firehose throttles, then AIMD.
        rates = (
            max_records_per_second * SHAPING_MARGIN if max_records_per_second else None,
            max_mib_per_second * 1024 * 1024 * SHAPING_MARGIN if max_mib_per_second else None,
        )
        self._limiter: RateLimiter | None = None
        self._adaptive: AdaptiveRate | None = None
        if rates != (None, None) or adaptive_rate:
            self._limiter = RateLimiter(rates, burst_s=SHAPING_BURST_S)
        if self._limiter is not None and rates == (None, None):
            self._adaptive = AdaptiveRate(
                self._limiter,
                lambda: (self.stats.records_sent, self.stats.bytes_sent),
                name=f"Firehose stream {stream_name!r}",
            )
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="firehose-send")
        self._closed = False
        self._aborted = threading.Event()

    @property
    def endpoint(self) -> str:
        return str(getattr(getattr(self._client, "meta", None), "endpoint_url", "<unknown>"))

    @property
    def region(self) -> str:
        return str(getattr(getattr(self._client, "meta", None), "region_name", None))

    # -- preflight -------------------------------------------------------------------------------

    def check_stream(self) -> None:
        """Fail fast, before any data is read, if the stream cannot take direct PUTs."""
        name = self.stream_name
        try:
            response = self._client.describe_delivery_stream(DeliveryStreamName=name)
        except ClientError as exc:
            code, message = _error_code(exc), redact(_error_message(exc))
            raise PermanentDeliveryError(
                f"cannot use Firehose stream {name!r} (region {self.region}, endpoint "
                f"{self.endpoint}): {code}: {message}. {_advice(code, self)}"
            ) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise PermanentDeliveryError(
                f"no usable AWS credentials to reach Firehose stream {name!r}: configure them "
                "(AWS_PROFILE, environment variables, SSO login or an instance role), then rerun"
            ) from exc
        except (*TRANSPORT_ERRORS, BotoCoreError) as exc:
            raise PermanentDeliveryError(
                f"cannot reach the Firehose endpoint {self.endpoint} to check stream {name!r} "
                f"({type(exc).__name__}): check the endpoint URL, the region and the network, "
                "then rerun"
            ) from exc
        description = response.get("DeliveryStreamDescription", {})
        status = description.get("DeliveryStreamStatus")
        stream_type = description.get("DeliveryStreamType", "DirectPut")
        if status != "ACTIVE":
            raise PermanentDeliveryError(
                f"Firehose stream {name!r} is {status}, not ACTIVE: wait until it is ACTIVE "
                "(or fix it in the console), then rerun"
            )
        if stream_type != "DirectPut":
            raise PermanentDeliveryError(
                f"Firehose stream {name!r} reads from a {stream_type} source and does not accept "
                "PutRecordBatch: create a Direct PUT stream for Moesif and use that one"
            )

    # -- sending ---------------------------------------------------------------------------------

    def submit(self, records: Sequence[bytes]) -> Future[int]:
        """Send *records*; the future gives ``len(records)`` once every record is acknowledged.

        Raises ValueError at once for a record over 1,024,000 bytes (nothing is sent).
        The future raises `TransientDeliveryError` or `PermanentDeliveryError` otherwise.
        submit never blocks and the internal queue is unbounded: the caller bounds memory by
        waiting on its oldest futures when too many are outstanding.
        """
        if self._closed:
            raise RuntimeError("FirehoseSender is closed")
        if not all(type(record) is bytes for record in records):
            for index, record in enumerate(records):
                if not isinstance(record, bytes | bytearray):
                    raise TypeError(f"record {index} is {type(record).__name__}, expected bytes")
        plan = plan_batches(list(map(len, records)))
        outer: Future[int] = Future()
        outer.set_running_or_notify_cancel()
        if not plan:
            outer.set_result(0)
            return outer
        tracker = ChunkTracker(
            outer,
            stream_name=self.stream_name,
            max_attempts=self.retry.max_attempts,
            total=len(records),
            batches=len(plan),
        )
        futures = [self._executor.submit(self._send_batch, records[s:e]) for s, e in plan]
        tracker.futures = futures
        for (start, end), future in zip(plan, futures, strict=True):
            future.add_done_callback(functools.partial(tracker.batch_done, size=end - start))
        return outer

    @property
    def rate_limits(self) -> tuple[float | None, float | None]:
        """The shaping now: (records/s, bytes/s), None where unlimited."""
        if self._limiter is None:
            return (None, None)
        records, nbytes = self._limiter.rates  # the limiter of a sender has two dimensions
        return (records, nbytes)

    def _shape(self, batch: Sequence[bytes]) -> None:
        if self._adaptive is not None:
            self._adaptive.tick()
        if self._limiter is not None and self._limiter.rates != (None, None):
            self._limiter.acquire((len(batch), sum(len(r) for r in batch)))

    def _send_batch(self, batch: Sequence[bytes]) -> int:
        """Send one batch until every record is acknowledged.

        The retry budget counts consecutive attempts that delivered nothing: an attempt that
        got some records acknowledged (a partial failure) starts the count again, so a batch
        under steady per-record failures still converges, while a stream that takes nothing
        gives up after `max_attempts` calls.
        """
        pending = list(batch)
        max_attempts = self.retry.max_attempts
        reason = ""
        attempt = 0  # consecutive attempts without progress
        retries = 0
        while True:
            if self._aborted.is_set():
                raise BatchFailed(len(pending), "the sender was closed", permanent=False)
            self._shape(pending)
            before = len(pending)
            pending, reason = self._attempt(pending)
            if not pending:
                return len(batch)
            attempt = 0 if len(pending) < before else attempt + 1
            if attempt >= max_attempts:
                break
            retries += 1
            attempt_for_delay = max(attempt, 1)
            with self._rng_lock:
                delay = self.retry.delay(attempt_for_delay, self._rng)
            self.stats.add(records_retried=len(pending))
            logger.debug(
                "retrying %d records to %s in %.3fs (retry %d, %d of %d without progress): %s",
                len(pending),
                self.stream_name,
                delay,
                retries,
                attempt,
                max_attempts,
                reason,
            )
            self._sleep(delay)
        logger.warning(
            "giving up on %d records to %s after %d attempts without progress: %s",
            len(pending),
            self.stream_name,
            max_attempts,
            reason,
        )
        raise BatchFailed(len(pending), reason, permanent=False)

    def _attempt(self, pending: list[bytes]) -> tuple[list[bytes], str]:
        """One PutRecordBatch call: (records still to send, why); raises if not retryable."""
        self.stats.add(firehose_calls=1)
        try:
            if self._wire is not None:
                response = self._wire.put_record_batch(self.stream_name, pending)
            else:
                response = self._client.put_record_batch(
                    DeliveryStreamName=self.stream_name, Records=[{"Data": r} for r in pending]
                )
        except ClientError as exc:
            code = _error_code(exc)
            reason = f"{code}: {redact(_error_message(exc), 200)}"
            if code in THROTTLING_CODES:
                self.stats.add(throttled_calls=1)
                if self._adaptive is not None:
                    self._adaptive.on_throttled()
            elif code in SERVER_ERROR_CODES or (
                _http_status(exc) >= 500 and code not in CREDENTIAL_CODES
            ):
                self.stats.add(server_errors=1)
            else:
                message = (
                    f"Firehose stream {self.stream_name!r} rejected a PutRecordBatch call: "
                    f"{reason}. {_advice(code, self)}"
                )
                raise BatchFailed(len(pending), message, permanent=True) from exc
            return pending, reason
        except TRANSPORT_ERRORS as exc:
            self.stats.add(connection_errors=1)
            return pending, f"connection error ({type(exc).__name__}) talking to {self.endpoint}"
        except (NoCredentialsError, PartialCredentialsError) as exc:
            message = (
                "no usable AWS credentials for Firehose: configure them (AWS_PROFILE, "
                "environment variables, SSO login or an instance role), then rerun"
            )
            raise BatchFailed(len(pending), message, permanent=True) from exc
        except BotoCoreError as exc:
            message = (
                f"unclassified error sending to Firehose stream {self.stream_name!r} "
                f"({type(exc).__name__}: {redact(str(exc), 200)}); not retried because a "
                "blind resend could duplicate records: investigate, then rerun"
            )
            raise BatchFailed(len(pending), message, permanent=True) from exc
        acked, failed, codes = self._split_response(pending, response)
        if acked:
            self._count_acked(acked)
        if not failed:
            return [], ""
        return failed, f"{len(failed)} records failed ({', '.join(sorted(codes))})"

    def _split_response(
        self, pending: list[bytes], response: dict[str, Any]
    ) -> tuple[list[bytes], list[bytes], set[str]]:
        """(acknowledged, failed, error codes), matching RequestResponses to records by index."""
        if not response.get("FailedPutCount"):
            return pending, [], set()
        entries = response.get("RequestResponses") or []
        if len(entries) != len(pending):
            raise BatchFailed(
                len(pending),
                f"Firehose answered {len(entries)} RequestResponses for {len(pending)} records; "
                "cannot tell which failed, not resending blindly: investigate, then rerun",
                permanent=True,
            )
        acked: list[bytes] = []
        failed: list[bytes] = []
        codes: set[str] = set()
        for record, entry in zip(pending, entries, strict=True):
            if entry.get("ErrorCode"):
                failed.append(record)
                codes.add(str(entry["ErrorCode"]))
            else:
                acked.append(record)
        return acked, failed, codes

    def _count_acked(self, acked: list[bytes]) -> None:
        sizes = list(map(len, acked))
        self.stats.add(
            records_sent=len(acked),
            bytes_sent=sum(sizes),
            billable_5kb_units=billable_units_total(sizes),
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self, *, cancel_pending: bool = False) -> None:
        """Wait for submitted work; with *cancel_pending*, stop early (futures then fail)."""
        self._closed = True
        if cancel_pending:
            self._aborted.set()
        self._executor.shutdown(wait=True, cancel_futures=cancel_pending)

    def __enter__(self) -> FirehoseSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close(cancel_pending=exc_type is not None)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "Unknown")


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _advice(code: str, sender: FirehoseSender) -> str:
    if code == "ResourceNotFoundException":
        return (
            f"The stream does not exist in region {sender.region} (endpoint {sender.endpoint}): "
            "create it, or fix the stream name or region, then rerun."
        )
    if code in CREDENTIAL_CODES:
        return (
            "The AWS credentials were rejected or lack permission: check which credentials are "
            "in use (profile, environment, role) and that they allow firehose:PutRecordBatch "
            "and firehose:DescribeDeliveryStream on this stream, then rerun."
        )
    if code.startswith("KMS") or "KMS" in code:
        return "The stream's KMS key is unusable: check the key's state and policy, then rerun."
    if code in {"InvalidArgumentException", "ValidationException", "InvalidSourceException"}:
        return (
            "Firehose refused the request as invalid (wrong stream type, or records over the "
            "limits): fix the cause, then rerun."
        )
    return (
        "This error is not known to be safe to retry (a blind resend could duplicate "
        "records): investigate, then rerun."
    )
