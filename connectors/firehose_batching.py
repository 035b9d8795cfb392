"""Splitting a chunk into PutRecordBatch calls, and joining the calls' outcomes back.

`plan_batches` / `split_batches` cut records into calls that respect Firehose's fixed limits;
`ChunkTracker` resolves the chunk's future once every call of the chunk is done.

Limits (Amazon Data Firehose API reference, PutRecordBatch; they cannot be raised):
at most 500 records per call, at most 4 MiB of record data per call, each record at most
1,000 KiB (1,024,000 bytes) before base64 encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future

from connectors.chunk_tracker import BatchesTracker
from moesif_backfill.errors import (
    DeliveryStalledError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_BATCH = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_RECORD_BYTES = 1_024_000
BILLING_INCREMENT_BYTES = 5 * 1024


def plan_batches(
    sizes: Sequence[int],
    *,
    max_records: int = MAX_RECORDS_PER_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[tuple[int, int]]:
    """Greedy split of records (given by their sizes) into ``[start, end)`` index ranges.

    Order is preserved, every index appears exactly once, and each range holds at most
    *max_records* records whose sizes sum to at most *max_bytes*. A range is only closed when
    the next record would not fit, so the number of calls is minimal for an ordered split.
    Raises ValueError for a record larger than *max_bytes* or `MAX_RECORD_BYTES`.
    """
    if max_records < 1 or max_bytes < 1:
        raise ValueError("max_records and max_bytes must be positive")
    if not sizes:
        return []
    biggest = max(sizes)
    if biggest > min(MAX_RECORD_BYTES, max_bytes):
        for index, size in enumerate(sizes):
            check_record_size(index, size, max_bytes=max_bytes)
    if biggest * max_records <= max_bytes:
        # Any max_records records fit in max_bytes (the usual case: actions of a few hundred
        # bytes), so the greedy split below would close a range every max_records records.
        n = len(sizes)
        return [(start, min(start + max_records, n)) for start in range(0, n, max_records)]
    ranges: list[tuple[int, int]] = []
    start = 0
    count = 0
    total = 0
    for index, size in enumerate(sizes):
        if count and (count + 1 > max_records or total + size > max_bytes):
            ranges.append((start, index))
            start, count, total = index, 0, 0
        count += 1
        total += size
    if count:
        ranges.append((start, len(sizes)))
    return ranges


def split_batches(
    records: Sequence[bytes],
    *,
    max_records: int = MAX_RECORDS_PER_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[Sequence[bytes]]:
    """`plan_batches` applied to the records themselves (slices of *records*)."""
    plan = plan_batches([len(r) for r in records], max_records=max_records, max_bytes=max_bytes)
    return [records[start:end] for start, end in plan]


def check_record_size(index: int, size: int, *, max_bytes: int = MAX_BATCH_BYTES) -> None:
    limit = min(MAX_RECORD_BYTES, max_bytes)
    if size > limit:
        raise ValueError(
            f"record {index} is {size} bytes; Firehose accepts at most {limit} bytes per "
            "record (filter or split such records before sending)"
        )


def billable_units_total(sizes: Sequence[int]) -> int:
    """Sum of `billable_units` over records of these sizes (one pass when all are small)."""
    if not sizes:
        return 0
    if max(sizes) <= BILLING_INCREMENT_BYTES:
        return len(sizes)
    return sum(map(billable_units, sizes))


def billable_units(size: int) -> int:
    """Firehose ingestion is billed per record rounded up to the next 5 KB (5,120 bytes here).

    A record of 0 bytes is counted as one unit, like any record smaller than 5 KB.
    """
    return max(1, -(-size // BILLING_INCREMENT_BYTES))


class ChunkTracker(BatchesTracker[int]):
    """Resolves one chunk's future (records acknowledged) once all of its batches are done."""

    def __init__(
        self,
        outer: Future[int],
        *,
        stream_name: str,
        max_attempts: int,
        total: int,
        batches: int,
    ) -> None:
        super().__init__(outer, total=total, batches=batches)
        self._stream_name = stream_name
        self._max_attempts = max_attempts

    def _result(self) -> int:
        return self._total

    def _fail(self, unacked: int, total: int) -> BaseException:
        lost = f"{unacked} of {total} records of this chunk were not acknowledged"
        if self._permanent is not None:
            return PermanentDeliveryError(f"{self._permanent} ({lost})")
        if self._stalled is not None:
            return DeliveryStalledError(
                f"{self._stalled} ({lost}). The checkpoint holds every acknowledged chunk: "
                "rerun to resume once the endpoint answers"
            )
        return TransientDeliveryError(
            f"{lost} by Firehose stream {self._stream_name!r} within "
            f"{self._max_attempts} attempts per batch (last error: {self._transient}). Rerun "
            "later to resume from the last checkpoint; records Firehose already took are "
            "deduplicated by transaction_id."
        )
