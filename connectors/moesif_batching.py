"""Moesif Collector API batches (`POST /v1/actions/batch`): how a chunk of actions is cut into
request bodies, what each answer means, and how the batches' outcomes make the chunk's.

A body is a JSON array of the actions as they came (``[`` + ``,``.join + ``]``: the bytes of an
action are never re-serialized), at most `max_body_bytes` uncompressed. Any 2xx acknowledges the
whole batch. 413 splits a batch in halves (a one-action batch answered 413 is *refused*: the
action is reported, never retried). 429, 5xx (and 408), timeouts and dropped connections are
retried; 400, 401, 402, 406 and any other answer stop the run (`DestinationRefusedError`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from connectors.chunk_tracker import BatchesTracker, Delivery
from moesif_backfill.errors import (
    DeliveryStalledError,
    DestinationRefusedError,
    TransientDeliveryError,
)

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/actions/batch"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})

# What a permanent answer means and what to do (FACTS: Moesif's documented error codes).
PERMANENT_ADVICE = {
    400: "Moesif refused a batch as a bad request (400): the actions are as the mapping built "
    "them; check the mapping with `moesif-backfill validate` and the answer",
    401: "Moesif refused the application id (401): check MOESIF_APPLICATION_ID / the Secret block",
    402: "Moesif refused the batch (402: the account's subscription is not active): check the "
    "Moesif account's plan and billing",
    406: "Moesif refused the batch (406: not acceptable as JSON): check that --moesif-url points "
    "at the Collector API and nothing in between rewrites the request",
}


def body_size(sizes: Sequence[int]) -> int:
    """Bytes of the JSON array of actions of these sizes: brackets and commas."""
    return sum(sizes) + max(len(sizes) - 1, 0) + 2


def plan_bodies(sizes: Sequence[int], max_body_bytes: int) -> list[tuple[int, int]]:
    """Greedy, ordered split of actions (by their sizes) into ``[start, end)`` ranges whose
    JSON array body is at most `max_body_bytes`. An action too big for a body of its own
    still gets one (the Collector answers 413 and it is refused); the engine rejects actions
    over `moesif_action_max_bytes` before they get here."""
    if max_body_bytes < 3:
        raise ValueError("max_body_bytes must be at least 3")
    if body_size(sizes) <= max_body_bytes:  # the usual case: no loop over the actions
        return [(0, len(sizes))] if sizes else []
    ranges: list[tuple[int, int]] = []
    start, total = 0, 2
    for index, size in enumerate(sizes):
        extra = size + (1 if index > start else 0)
        if index > start and total + extra > max_body_bytes:
            ranges.append((start, index))
            start, total, extra = index, 2, size
        total += extra
    if len(sizes) > start:
        ranges.append((start, len(sizes)))
    return ranges


def batch_body(records: Sequence[bytes]) -> bytes:
    """The JSON array of `records` (each already one JSON action), byte for byte."""
    return b"[" + b",".join(records) + b"]"


def permanent_reason(status: int, endpoint: str, detail: str) -> str:
    """The message of an answer that no retry can fix."""
    advice = PERMANENT_ADVICE.get(
        status,
        f"Moesif's Collector API at {endpoint} answered HTTP {status}, which is neither success "
        "nor a retryable error: check --moesif-url (a proxy or something else answering?)",
    )
    shown = f" (answer: {detail})" if detail else ""
    return f"{advice}{shown}; nothing of that batch counts as delivered"


class CollectorChunk(BatchesTracker[Delivery]):
    """Resolves one chunk's future once all of its batches are done: a `Delivery` when every
    batch was acknowledged or refused, else the chunk's error (the first permanent one first)."""

    def __init__(self, outer: Future[Delivery], *, endpoint: str, total: int, batches: int) -> None:
        super().__init__(outer, total=total, batches=batches)
        self._collector_url = endpoint
        self._refused: list[tuple[int, str]] = []

    def _acknowledged(self, value: Any) -> None:
        self._refused.extend(value)  # the actions of the batch answered 413 on their own

    def _result(self) -> Delivery:
        return Delivery(self._total, tuple(sorted(self._refused)))

    def _fail(self, unacked: int, total: int) -> BaseException:
        lost = f"{unacked} of {total} actions of this chunk were not acknowledged"
        if self._permanent is not None:
            return DestinationRefusedError(f"{self._permanent} ({lost})")
        if self._stalled is not None:
            return DeliveryStalledError(
                f"{self._stalled} ({lost}). The checkpoint holds every acknowledged chunk: "
                "rerun to resume once the Collector API answers"
            )
        return TransientDeliveryError(
            f"{lost} by Moesif's Collector API at {self._collector_url} (last error: "
            f"{self._transient}). Rerun later to resume from the last checkpoint; actions "
            "Moesif already took are deduplicated by transaction_id."
        )


__all__ = [
    "BATCH_PATH",
    "PERMANENT_ADVICE",
    "RETRYABLE_STATUSES",
    "RETRY_AFTER_STATUSES",
    "CollectorChunk",
    "batch_body",
    "body_size",
    "permanent_reason",
    "plan_bodies",
]
