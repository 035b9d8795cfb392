"""Sending records to an Amazon Data Firehose stream (Direct PUT) with PutRecordBatch.

`FirehoseSender.submit` splits a chunk of records into calls of at most 500 records and 4 MiB
(`connectors.firehose_batching`), sends them on a thread pool with ``client.put_record_batch``
of a plain boto3 client, and resolves the chunk's future only when EVERY record was
acknowledged. The retry loop here is the only one: the client from
`connectors.firehose_client.make_firehose_client` has botocore retries off (public ``Config``:
one attempt per call, no parameter validation), so attempts are never multiplied. What each
error means is `connectors.firehose_errors`; how an answer is read, `connectors.firehose_responses`.

Error handling, per PutRecordBatch call:

* An answer acknowledges a record only through its own ``RequestResponses`` entry (same
  order as the request) carrying a ``RecordId``. An HTTP 200 answer without one entry per
  record, with an entry holding neither ``RecordId`` nor ``ErrorCode``, or whose
  ``FailedPutCount`` disagrees with the entries (e.g. ``{}`` from a proxy) acknowledges
  NOTHING: the whole call is resent after backoff, like a 5xx (counted in ``server_errors``).
* ``FailedPutCount > 0``: only the failed records are resent. Records failing with
  ``ServiceUnavailableException`` are throttling (``throttled_records``): the adaptive rate
  is lowered and the resend backs off exponentially, like a throttled call. Records failing
  otherwise (``InternalFailure``) are resent after a short delay (the first backoff step).
* ``ServiceUnavailableException`` (or a generic ``ThrottlingException``) for the whole call,
  whatever the HTTP status: throughput exceeded; back off and resend the call.
* HTTP 5xx / ``InternalFailure`` and transport errors (connection refused, closed or reset,
  connect/read timeouts): back off and resend. A dropped connection may have been stored
  already, so resends can duplicate records; Moesif deduplicates on ``transaction_id``.
* Anything else (unknown stream, access denied, bad credentials or signature, invalid request,
  KMS errors, and any unclassified error) raises `PermanentDeliveryError` at once: a blind
  resend of an error we do not understand could duplicate records for nothing.

Backoff: exponential with full jitter (`RetryPolicy`), its exponent the larger of the attempts
in a row without progress and the attempts in a row that were throttled (whole call or some
records). When a batch runs out of attempts (`RetryPolicy.max_attempts` in a row without
progress) the chunk's future raises `TransientDeliveryError`; nothing is lost, since the caller
checkpoints only acknowledged chunks and a rerun resumes.
Messages and logs never include credentials, request headers or the client configuration.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from connectors.adaptive_rate import Shaping
from connectors.chunk_tracker import BatchFailed
from connectors.firehose_batching import (
    ChunkTracker,
    billable_units_total,
    plan_batches,
)
from connectors.firehose_client import check_delivery_stream, client_endpoint, client_region
from connectors.firehose_errors import (
    CREDENTIAL_CODES,
    SERVER_ERROR_CODES,
    THROTTLING_CODES,
    TRANSPORT_ERRORS,
    advice,
    error_code,
    error_message,
    http_status,
    redact,
)
from connectors.firehose_responses import UnusableAnswer, failed_records, http_status_of
from connectors.firehose_stall import StallClock
from connectors.firehose_stats import SendStats
from connectors.rate_limit import RetryPolicy

__all__ = ["TRANSPORT_ERRORS", "FirehoseSender", "RetryPolicy", "SendStats", "redact"]

logger = logging.getLogger(__name__)

DEFAULT_RETRY = RetryPolicy()  # frozen, so one shared default is safe


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
        stall_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._client = client
        self.stream_name = stream_name
        self.retry = retry
        self.stats = SendStats()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._shaping = Shaping(
            max_records_per_second,
            max_mib_per_second,
            adaptive_rate,
            lambda: (self.stats.records_sent, self.stats.bytes_sent),
            f"Firehose stream {stream_name!r}",
        )
        # A stream acknowledging nothing for stall_timeout_s fails its batches at once.
        self._stall = StallClock(stream_name, stall_timeout_s, clock)
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="firehose-send")
        self._closed = False
        self._aborted = threading.Event()

    @property
    def endpoint(self) -> str:
        return client_endpoint(self._client)

    @property
    def region(self) -> str:
        return client_region(self._client)

    # -- preflight -------------------------------------------------------------------------------

    def check_stream(self) -> None:
        """Fail fast, before any data is read, if the stream cannot take direct PUTs."""
        check_delivery_stream(self._client, self.stream_name)

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
        sizes = list(map(len, records))  # the only place record sizes are measured
        plan = plan_batches(sizes)
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
        futures = [
            self._executor.submit(self._send_batch, records[s:e], sizes[s:e]) for s, e in plan
        ]
        tracker.futures = futures
        for (start, end), future in zip(plan, futures, strict=True):
            future.add_done_callback(functools.partial(tracker.batch_done, size=end - start))
        return outer

    @property
    def rate_limits(self) -> tuple[float | None, float | None]:
        """The shaping now: (records/s, bytes/s), None where unlimited."""
        return self._shaping.rates

    def _send_batch(self, batch: Sequence[bytes], sizes: Sequence[int]) -> int:
        """Send one batch (records and their sizes) until every record is acknowledged.

        The retry budget counts consecutive attempts that delivered nothing: an attempt that
        got some records acknowledged (a partial failure) starts the count again, so a batch
        under steady per-record failures still converges, while a stream that takes nothing
        gives up after `max_attempts` calls. The backoff's exponent is the larger of that count
        and the attempts in a row that were throttled (the whole call, or some of its records
        with ``ServiceUnavailableException``): throttling backs off exponentially even while
        some records get through; other partial failures are resent after the first step.
        """
        pending, pending_sizes = list(batch), list(sizes)
        max_attempts = self.retry.max_attempts
        reason = ""
        attempt = 0  # consecutive attempts without progress: the retry budget
        throttled = 0  # consecutive throttled attempts: the backoff
        retries = 0
        while True:
            if self._aborted.is_set():
                raise BatchFailed(len(pending), "the sender was closed", permanent=False)
            self._shaping.wait(len(pending), sum(pending_sizes))
            before = len(pending)
            started = self._stall.now()
            result = self._attempt(pending, pending_sizes)
            pending, pending_sizes, reason = result.records, result.sizes, result.reason
            if not pending:
                return len(batch)
            attempt = 0 if len(pending) < before else attempt + 1
            throttled = throttled + 1 if result.throttled else 0
            if len(pending) == before:  # nothing acknowledged by this call
                self._stall.failed(started)
            left = self._stall.left(reason)
            if left <= 0:
                stalled = self._stall.reason(self.endpoint, reason, self.stats)
                raise BatchFailed(len(pending), stalled, permanent=False, stalled=True)
            if attempt >= max_attempts:
                break
            retries += 1
            with self._rng_lock:
                delay = min(self.retry.delay(max(attempt, throttled, 1), self._rng), left)
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
        logger.info(  # the chunk's error says it once (TransientDeliveryError)
            "giving up on %d records to %s after %d attempts without progress: %s",
            len(pending),
            self.stream_name,
            max_attempts,
            reason,
        )
        raise BatchFailed(len(pending), reason, permanent=False)

    def _attempt(self, pending: list[bytes], sizes: list[int]) -> _Attempt:
        """One PutRecordBatch call: what is still to send, and why; raises if not retryable."""
        self.stats.add(firehose_calls=1)
        try:
            response = self._client.put_record_batch(
                DeliveryStreamName=self.stream_name, Records=[{"Data": r} for r in pending]
            )
        except ClientError as exc:
            code = error_code(exc)
            reason = f"{code}: {redact(error_message(exc), 200)}"
            if code in THROTTLING_CODES:
                self.stats.add(throttled_calls=1)
                self._shaping.throttled()
                return _Attempt(pending, sizes, reason, throttled=True)
            if code in SERVER_ERROR_CODES or (
                http_status(exc) >= 500 and code not in CREDENTIAL_CODES
            ):
                self.stats.add(server_errors=1)
                return _Attempt(pending, sizes, reason, throttled=False)
            message = (
                f"Firehose stream {self.stream_name!r} rejected a PutRecordBatch call: "
                f"{reason}. {advice(code, region=self.region, endpoint=self.endpoint)}"
            )
            raise BatchFailed(len(pending), message, permanent=True) from exc
        except TRANSPORT_ERRORS as exc:
            self.stats.add(connection_errors=1)
            reason = f"connection error ({type(exc).__name__}) talking to {self.endpoint}"
            return _Attempt(pending, sizes, reason, throttled=False)
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
        try:
            failed, codes = failed_records(response, len(pending))
        except UnusableAnswer as exc:
            self.stats.add(server_errors=1)
            status = http_status_of(response)
            reason = (
                f"Firehose stream {self.stream_name!r} answered HTTP {status} without "
                f"acknowledging each record ({exc}), so nothing of that call counts as "
                f"delivered; if this persists, check what answers at {self.endpoint} (a proxy "
                "or gateway in between, or not a Firehose endpoint)"
            )
            return _Attempt(pending, sizes, reason, throttled=False)
        if not failed:
            self._count_acked(sizes)
            return _Attempt([], [], "", throttled=False)
        lost = set(failed)
        self._count_acked([n for i, n in enumerate(sizes) if i not in lost])
        throttled = sum(n for code, n in codes.items() if code in THROTTLING_CODES)
        if throttled:
            self.stats.add(throttled_records=throttled)
            self._shaping.throttled()  # after counting this call's acknowledged records
        reason = f"{len(failed)} records failed ({', '.join(sorted(codes))})"
        return _Attempt(
            [pending[i] for i in failed], [sizes[i] for i in failed], reason, bool(throttled)
        )

    def stalled_for(self) -> float:
        """Seconds the stream has acknowledged nothing while calls failed (0: not failing)."""
        return self._stall.stalled_for()

    def _count_acked(self, sizes: list[int]) -> None:
        self._stall.acknowledged()
        self.stats.add(
            records_sent=len(sizes),
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


class _Attempt(NamedTuple):
    """What one call left to send: records, their sizes, why, and whether it was throttled."""

    records: list[bytes]
    sizes: list[int]
    reason: str
    throttled: bool
