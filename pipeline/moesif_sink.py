"""The sink of `--sink moesif`: each chunk straight to Moesif's Collector API
(`connectors.moesif_collector.CollectorSender`). A chunk's future resolves to a
`pipeline.sinks.Delivery`: its actions, and those the Collector refused (413 on their own),
which the engine counts as rejected."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from connectors.moesif_collector import CollectorSender
from pipeline.sinks import Delivery, Quota

SINK_NAME = "moesif"


class CollectorSink:
    """Sends each chunk to the Collector API; see the module docstring."""

    def __init__(self, sender: CollectorSender, quota: Quota | None = None) -> None:
        self.sender = sender
        self.quota = quota or Quota()

    def __repr__(self) -> str:
        return f"CollectorSink(endpoint={self.sender.endpoint!r})"

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Future[Delivery]:
        return self.sender.submit(records.cast(pa.binary()).to_pylist())

    def close_file(self) -> None:
        return None

    def stalled_for(self) -> float:
        """Seconds the Collector has acknowledged nothing while calls failed."""
        return self.sender.stalled_for()

    def stats(self) -> dict[str, Any]:
        snap = self.sender.stats.snapshot()
        return {
            "sink": SINK_NAME,
            "calls": snap["calls"],
            "records_retried": snap["records_retried"],
            "records_refused": snap["records_refused"],
            "throttled_calls": snap["throttled_calls"],
            "server_errors": snap["server_errors"],
            "connection_errors": snap["connection_errors"],
            "bytes_sent": snap["bytes_sent"],
            "bytes_compressed": snap["bytes_compressed"],
            **self.quota.report(snap["records_sent"], snap["bytes_sent"]),
        }

    def close(self) -> None:
        self.sender.close()


__all__ = ["SINK_NAME", "CollectorSink"]
