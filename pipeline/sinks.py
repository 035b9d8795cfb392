"""Where encoded actions go: Firehose, a dry-run file, or nowhere (validate).

A sink takes one chunk's records and returns a future that resolves to the number of records
delivered, or to a `Delivery` when the destination refused some records for good (the Moesif
Collector sink: an action answered 413 on its own); the engine commits the chunk only after that
future succeeded, and counts refused records as rejected.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip_threaded

from connectors.chunk_tracker import Delivery
from connectors.firehose import FirehoseSender, SendStats
from connectors.firehose_batching import BILLING_INCREMENT_BYTES
from connectors.stream_router import split_by_stream
from pipeline.rejects import PRIVATE_FILE_MODE


def byte_counts(records: pa.Array) -> tuple[int, int]:
    """(total bytes, Firehose billable 5 KB units) of a chunk's records."""
    lengths = np.asarray(pc.binary_length(records).to_numpy(zero_copy_only=False), dtype=np.int64)
    units = (lengths + BILLING_INCREMENT_BYTES - 1) // BILLING_INCREMENT_BYTES
    return int(lengths.sum()), int(units.sum())


def delivery_of(result: int | Delivery) -> Delivery:
    """A sink future's result as a `Delivery` (a plain count: everything delivered)."""
    return result if isinstance(result, Delivery) else Delivery(result)


# What `Sink.submit` returns: a future of the records delivered, or of a `Delivery` (a sink that
# may refuse records for good: the Moesif Collector sink). Firehose's futures resolve to int.
SinkFuture = Future[int] | Future[Delivery] | Future[int | Delivery]


def _done(value: int) -> Future[int]:
    fut: Future[int] = Future()
    fut.set_result(value)
    return fut


class Sink(Protocol):
    def open_file(self, index: int, name: str) -> None: ...
    def submit(self, records: pa.Array) -> SinkFuture: ...
    def close_file(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Quota:
    """The send limits of a run, per stream, for the expected send duration (None: not given)."""

    records_per_second: float | None = None
    mib_per_second: float | None = None
    streams: int = 1

    def expected_seconds(self, records: int, nbytes: int) -> float | None:
        """max(records / records/s, bytes / bytes/s) / streams: the time the quota allows."""
        times = []
        if self.records_per_second:
            times.append(records / self.records_per_second)
        if self.mib_per_second:
            times.append(nbytes / (self.mib_per_second * 1024 * 1024))
        if not times:
            return None
        return round(max(times) / max(self.streams, 1), 3)

    def report(self, records: int, nbytes: int) -> dict[str, Any]:
        return {
            "expected_send_s": self.expected_seconds(records, nbytes),
            "send_limits": {
                "records_per_second": self.records_per_second,
                "mib_per_second": self.mib_per_second,
                "streams": self.streams,
            },
        }


# The sender counters the summary adds up (records_sent is reported per stream and as the
# quota's record count: the run's own sent count comes from the checkpointed chunks).
_SENDER_TOTALS = tuple(f for f in SendStats.FIELDS if f != "records_sent")


class FirehoseSink:
    """Sends each chunk to one stream, or spread over several by `connectors.stream_router`.

    With several streams, each has its own `FirehoseSender` (own limiter, adaptive rate and
    max_in_flight); a chunk's future resolves when every stream acknowledged its part and
    fails if any part failed (the chunk is then not checkpointed, and a rerun resends it whole,
    each record to the same stream).
    """

    def __init__(
        self, senders: FirehoseSender | Sequence[FirehoseSender], quota: Quota | None = None
    ) -> None:
        self.senders = [senders] if isinstance(senders, FirehoseSender) else list(senders)
        if not self.senders:
            raise ValueError("FirehoseSink needs at least one sender")
        self.sender = self.senders[0]
        self.quota = quota or Quota(streams=len(self.senders))

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Future[int]:
        if len(self.senders) == 1:
            return self.sender.submit(records.cast(pa.binary()).to_pylist())
        parts = split_by_stream(records, len(self.senders))
        return _all_of(
            [
                sender.submit(part.cast(pa.binary()).to_pylist())
                for sender, part in zip(self.senders, parts, strict=True)
                if len(part)
            ]
        )

    def close_file(self) -> None:
        return None

    def stalled_for(self) -> float:
        """The longest time any of the streams has acknowledged nothing (a stalled stream)."""
        return max(sender.stalled_for() for sender in self.senders)

    def stats(self) -> dict[str, Any]:
        snaps = {sender.stream_name: sender.stats.snapshot() for sender in self.senders}
        totals = {k: sum(s.get(k, 0) for s in snaps.values()) for k in _SENDER_TOTALS}
        records = sum(s.get("records_sent", 0) for s in snaps.values())
        streams = {
            name: {
                "records": s.get("records_sent", 0),
                "calls": s.get("firehose_calls", 0),
                "throttled": s.get("throttled_calls", 0),
                "throttled_records": s.get("throttled_records", 0),
                "records_retried": s.get("records_retried", 0),
                "bytes": s.get("bytes_sent", 0),
            }
            for name, s in snaps.items()
        }
        return {
            "sink": "firehose",
            "calls": totals["firehose_calls"],
            **totals,
            **self.quota.report(records, totals["bytes_sent"]),
            "streams": streams,
        }

    def close(self) -> None:
        errors: list[BaseException] = []
        for sender in self.senders:
            try:
                sender.close()
            except BaseException as exc:  # close them all, then raise the first problem
                errors.append(exc)
        if errors:
            raise errors[0]


def _all_of(futures: list[Future[int]]) -> Future[int]:
    """A future of the sum of *futures*, once all are done; the first failure (in order) if any."""
    outer: Future[int] = Future()
    outer.set_running_or_notify_cancel()
    if not futures:
        outer.set_result(0)
        return outer
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[int]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            assert failed[0] is not None
            outer.set_exception(failed[0])
        else:
            outer.set_result(sum(f.result() for f in futures))

    for future in futures:
        future.add_done_callback(one_done)
    return outer


class CountingSink:
    """Sends nothing; counts what would be sent (validate)."""

    def __init__(self, quota: Quota | None = None) -> None:
        self._bytes = 0
        self._units = 0
        self._records = 0
        self.quota = quota or Quota()

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Future[int]:
        b, u = byte_counts(records)
        self._bytes += b
        self._units += u
        self._records += len(records)
        return _done(len(records))

    def close_file(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {
            **dict.fromkeys(_SENDER_TOTALS, 0),
            "bytes_sent": self._bytes,
            "billable_5kb_units": self._units,
            **self.quota.report(self._records, self._bytes),
        }

    def close(self) -> None:
        return None


class DryRunSink(CountingSink):
    """Writes exactly the records that would be sent: one gzip NDJSON file per input file.

    Compression runs on a background thread (igzip from python-isal), so it overlaps with
    encoding on the main thread.
    """

    def __init__(self, out_dir: Path, quota: Quota | None = None) -> None:
        super().__init__(quota)
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._fh: Any = None
        self.files: list[Path] = []

    def open_file(self, index: int, name: str) -> None:
        self.close_file()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)
        path = self.out_dir / f"{index:05d}-{safe}.ndjson.gz"
        # The would-be records hold customer data: readable by the owner only.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE))
        self._fh = igzip_threaded.open(  # type: ignore[no-untyped-call]  # isal has no stubs
            path, "wb", compresslevel=1, threads=1
        )
        self.files.append(path)

    def submit(self, records: pa.Array) -> Future[int]:
        super().submit(records)
        if len(records) and self._fh is not None:
            lines = pc.binary_join_element_wise(records, "\n", "")
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
            start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
            self._fh.write(memoryview(lines.buffers()[2])[start:end])
        return _done(len(records))

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self.close_file()


__all__ = [
    "CountingSink",
    "Delivery",
    "DryRunSink",
    "FirehoseSink",
    "Quota",
    "Sink",
    "SinkFuture",
    "byte_counts",
    "delivery_of",
]
