"""Sending actions straight to Moesif's Collector API (`POST {base}/v1/actions/batch`).

`connectors.moesif_http.CollectorClient` makes the POSTs (keep-alive, gzip, the application
id in a header, never in a message).

`CollectorSender.submit` cuts a chunk's actions into bodies of at most `batch_max_bytes`
(`connectors.moesif_batching`), sends them on `max_in_flight` threads and resolves the chunk's
future with `Delivery` once every batch was acknowledged (any 2xx) or refused (an action
answered 413 on its own). Retries as `connectors.firehose`: exponential backoff with full
jitter (`RetryPolicy`), at most `max_attempts` in a row per batch, a `Retry-After` of a 429/503
honoured up to `RETRY_AFTER_CAP_S`; the stall clock fails the batches once the Collector has
acknowledged nothing for `stall_timeout_s`. Shaping: records/s and bytes/s at 98% of the given
limits, else (adaptive) lowered on 429.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from isal import igzip

from connectors.adaptive_rate import Shaping
from connectors.chunk_tracker import BatchFailed, Delivery
from connectors.firehose_stall import StallClock
from connectors.firehose_stats import SendStats
from connectors.moesif_batching import (
    RETRY_AFTER_STATUSES,
    RETRYABLE_STATUSES,
    CollectorChunk,
    batch_body,
    permanent_reason,
    plan_bodies,
)
from connectors.moesif_http import APP_ID_HEADER, TRANSPORT_ERRORS, Answer, CollectorClient
from connectors.rate_limit import RetryPolicy

logger = logging.getLogger(__name__)

RETRY_AFTER_CAP_S = 30.0


class CollectorStats(SendStats):
    """Counters of one `CollectorSender`: ``calls`` (POSTs, each retry counts),
    ``records_sent`` / ``bytes_sent`` (acknowledged actions and their uncompressed bytes),
    ``records_retried``, ``records_refused`` (413 alone), ``throttled_calls`` (429),
    ``server_errors`` (5xx, 408), ``connection_errors``, ``bytes_compressed`` (gzip bodies
    acknowledged)."""

    FIELDS = (
        "calls",
        "records_sent",
        "records_retried",
        "records_refused",
        "throttled_calls",
        "server_errors",
        "connection_errors",
        "bytes_sent",
        "bytes_compressed",
    )


class CollectorSender:
    """Sends chunks of actions to the Collector API; see the module docstring."""

    def __init__(
        self,
        client: CollectorClient,
        *,
        batch_max_bytes: int = 12_000_000,
        max_in_flight: int = 8,
        max_records_per_second: float | None = None,
        max_mib_per_second: float | None = None,
        retry: RetryPolicy | None = None,
        adaptive_rate: bool = False,
        stall_timeout_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._client = client
        self.endpoint = client.endpoint
        self.batch_max_bytes = batch_max_bytes
        self.retry = retry or RetryPolicy()
        self.stats = CollectorStats()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._shaping = Shaping(
            max_records_per_second,
            max_mib_per_second,
            adaptive_rate,
            lambda: (self.stats.records_sent, self.stats.bytes_sent),
            "Moesif Collector API",
        )
        self._stall = StallClock(
            self.endpoint, stall_timeout_s, clock, label="Moesif Collector API"
        )
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="moesif-send")
        self._closed = False
        self._aborted = threading.Event()

    def __repr__(self) -> str:
        return f"CollectorSender(endpoint={self.endpoint!r})"

    def submit(self, records: Sequence[bytes]) -> Future[Delivery]:
        """Send `records` (each one JSON action); the future gives `Delivery` once every batch
        was acknowledged or refused, or raises `DestinationRefusedError`,
        `TransientDeliveryError` or `DeliveryStalledError`. Never blocks."""
        if self._closed:
            raise RuntimeError("CollectorSender is closed")
        sizes = list(map(len, records))
        plan = plan_bodies(sizes, self.batch_max_bytes)
        outer: Future[Delivery] = Future()
        outer.set_running_or_notify_cancel()
        if not plan:
            outer.set_result(Delivery(0))
            return outer
        chunk = CollectorChunk(outer, endpoint=self.endpoint, total=len(records), batches=len(plan))
        futures = [
            self._executor.submit(self._deliver, records[s:e], sizes[s:e], s) for s, e in plan
        ]
        chunk.futures = futures
        for (start, end), future in zip(plan, futures, strict=True):
            future.add_done_callback(functools.partial(chunk.batch_done, size=end - start))
        return outer

    def _deliver(
        self, records: Sequence[bytes], sizes: Sequence[int], first: int
    ) -> list[tuple[int, str]]:
        """Send one batch until acknowledged; on 413 its halves (a single action: refused).
        The refused actions, by their index in the chunk."""
        if self._send(records, sizes):
            return []
        if len(records) == 1:
            self.stats.add(records_refused=1)
            reason = (
                f"refused by Moesif's Collector API: 413 (payload too large) for this action "
                f"alone ({sizes[0]:,} bytes)"
            )
            logger.warning("an action of %d bytes was refused with 413 (rejected)", sizes[0])
            return [(first, reason)]
        mid = len(records) // 2
        logger.info("413 for a batch of %d actions: sending it in halves", len(records))
        return self._deliver(records[:mid], sizes[:mid], first) + self._deliver(
            records[mid:], sizes[mid:], first + mid
        )

    def _send(self, records: Sequence[bytes], sizes: Sequence[int]) -> bool:
        """POST one batch until a 2xx (True) or a 413 (False); raises `BatchFailed` on a
        permanent answer, when `max_attempts` in a row failed, or when stalled."""
        raw = sum(sizes) + len(sizes) + 1
        body = igzip.compress(batch_body(records), compresslevel=1)
        attempt = 0
        while True:
            if self._aborted.is_set():
                raise BatchFailed(len(records), "the sender was closed", permanent=False)
            self._shaping.wait(len(records), raw)
            started = self._stall.now()
            done, reason, wait = self._attempt(records, raw, body)
            if done is not None:
                return done
            attempt += 1
            self._stall.failed(started)
            left = self._stall.left(reason)
            if left <= 0:
                raise BatchFailed(
                    len(records), self._stalled(reason), permanent=False, stalled=True
                )
            if attempt >= self.retry.max_attempts:
                logger.info(
                    "giving up on %d actions after %d attempts: %s", len(records), attempt, reason
                )
                raise BatchFailed(len(records), reason, permanent=False)
            with self._rng_lock:
                delay = self.retry.delay(attempt, self._rng)
            if wait is not None:
                delay = max(delay, wait)
            delay = min(delay, left)
            self.stats.add(records_retried=len(records))
            logger.debug("retrying %d actions in %.3fs: %s", len(records), delay, reason)
            self._sleep(delay)

    def _attempt(
        self, records: Sequence[bytes], raw: int, body: bytes
    ) -> tuple[bool | None, str, float | None]:
        """One POST: (True: acknowledged, False: 413, None: retry; why; the Retry-After to
        honour). Raises `BatchFailed` for an answer no retry can fix."""
        self.stats.add(calls=1)
        try:
            answer = self._client.post(body)
        except TRANSPORT_ERRORS as exc:
            self.stats.add(connection_errors=1)
            return None, f"connection error ({type(exc).__name__}) talking to {self.endpoint}", None
        status = answer.status
        if 200 <= status < 300:
            self._stall.acknowledged()
            self.stats.add(records_sent=len(records), bytes_sent=raw, bytes_compressed=len(body))
            return True, "", None
        if status == 413:
            return False, "", None
        if status not in RETRYABLE_STATUSES:
            message = permanent_reason(status, self.endpoint, answer.detail)
            raise BatchFailed(len(records), message, permanent=True)
        if status == 429:
            self.stats.add(throttled_calls=1)
            self._shaping.throttled()
        else:
            self.stats.add(server_errors=1)
        wait = None
        if status in RETRY_AFTER_STATUSES and answer.retry_after is not None:
            wait = min(answer.retry_after, RETRY_AFTER_CAP_S)
        detail = f" ({answer.detail})" if answer.detail else ""
        return None, f"HTTP {status} from {self.endpoint}{detail}", wait

    def _stalled(self, last_error: str) -> str:
        s = self.stats
        return (
            f"Moesif's Collector API at {self.endpoint} acknowledged nothing for "
            f"{self._stall.timeout_s or 0:.0f} s (stall_timeout_s; last error: {last_error}; "
            f"calls so far: {s.calls}, connection errors {s.connection_errors}, server errors "
            f"{s.server_errors}, throttled {s.throttled_calls}): the endpoint refuses or drops "
            "connections, or does not answer"
        )

    def stalled_for(self) -> float:
        """Seconds the Collector has acknowledged nothing while calls failed (0: not failing)."""
        return self._stall.stalled_for()

    def close(self, *, cancel_pending: bool = False) -> None:
        """Wait for submitted work (with `cancel_pending`, stop early), close the connections."""
        self._closed = True
        if cancel_pending:
            self._aborted.set()
        try:
            self._executor.shutdown(wait=True, cancel_futures=cancel_pending)
        finally:
            self._client.close()


__all__ = [
    "APP_ID_HEADER",
    "RETRY_AFTER_CAP_S",
    "Answer",
    "CollectorClient",
    "CollectorSender",
    "CollectorStats",
]
