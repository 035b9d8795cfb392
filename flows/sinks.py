"""Where encoded actions go: Firehose, a dry-run file, or nowhere (validate).

A sink takes one chunk's records and returns a future that resolves to the number of records
delivered; the engine commits the chunk only after that future succeeded.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip_threaded

from connectors.firehose import FirehoseSender
from connectors.firehose_batching import BILLING_INCREMENT_BYTES
from flows.rejects import PRIVATE_FILE_MODE


def byte_counts(records: pa.Array) -> tuple[int, int]:
    """(total bytes, Firehose billable 5 KB units) of a chunk's records."""
    lengths = np.asarray(pc.binary_length(records).to_numpy(zero_copy_only=False), dtype=np.int64)
    units = (lengths + BILLING_INCREMENT_BYTES - 1) // BILLING_INCREMENT_BYTES
    return int(lengths.sum()), int(units.sum())


def _done(value: int) -> Future[int]:
    fut: Future[int] = Future()
    fut.set_result(value)
    return fut


class Sink(Protocol):
    def open_file(self, index: int, name: str) -> None: ...
    def submit(self, records: pa.Array) -> Future[int]: ...
    def close_file(self) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class FirehoseSink:
    def __init__(self, sender: FirehoseSender) -> None:
        self.sender = sender

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Future[int]:
        return self.sender.submit(records.cast(pa.binary()).to_pylist())

    def close_file(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        s = self.sender.stats.snapshot()
        return {
            "firehose_calls": s.get("firehose_calls", 0),
            "records_retried": s.get("records_retried", 0),
            "throttled_calls": s.get("throttled_calls", 0),
            "server_errors": s.get("server_errors", 0),
            "connection_errors": s.get("connection_errors", 0),
            "bytes_sent": s.get("bytes_sent", 0),
            "billable_5kb_units": s.get("billable_5kb_units", 0),
        }

    def close(self) -> None:
        self.sender.close()


class CountingSink:
    """Sends nothing; counts what would be sent (validate)."""

    def __init__(self) -> None:
        self._bytes = 0
        self._units = 0

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Future[int]:
        b, u = byte_counts(records)
        self._bytes += b
        self._units += u
        return _done(len(records))

    def close_file(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {
            "firehose_calls": 0,
            "records_retried": 0,
            "throttled_calls": 0,
            "server_errors": 0,
            "connection_errors": 0,
            "bytes_sent": self._bytes,
            "billable_5kb_units": self._units,
        }

    def close(self) -> None:
        return None


class DryRunSink(CountingSink):
    """Writes exactly the records that would be sent: one gzip NDJSON file per input file.

    Compression runs on a background thread (igzip from python-isal), so it overlaps with
    encoding on the main thread.
    """

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
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
