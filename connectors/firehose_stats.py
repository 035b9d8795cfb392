"""The counters of one `connectors.firehose.FirehoseSender`: calls, records, retries, bytes."""

from __future__ import annotations

import threading

__all__ = ["SendStats"]


class SendStats:
    """Thread-safe counters of one sender.

    ``firehose_calls``: PutRecordBatch calls attempted (each retry counts). ``records_sent`` /
    ``bytes_sent``: records and data bytes Firehose acknowledged (a record resent after a
    dropped connection counts each time it was acknowledged). ``records_retried``: record
    resends (a whole-call retry of 500 records adds 500). ``throttled_calls``: calls refused
    whole for throughput; ``throttled_records``: records that failed with
    ``ServiceUnavailableException`` inside an answered call. ``server_errors``: 5xx /
    ``InternalFailure`` calls, and answers that acknowledged nothing (no ``RequestResponses``
    entry per record). ``billable_5kb_units``: sum over
    acknowledged records of ceil(len / 5120), at least 1 per record, because Firehose bills
    ingestion per record rounded up to the next 5 KB (taken here as 5 * 1024 bytes).
    """

    FIELDS = (
        "firehose_calls",
        "records_sent",
        "records_retried",
        "throttled_calls",
        "throttled_records",
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
        if name in type(self).FIELDS:
            with self._lock:
                return self._values[name]
        raise AttributeError(name)
