"""The rejects file: one NDJSON line per row that could not become a valid action.

Each line: {"source": file, "row": 1-based data row in that file, "reason": ..., "values": {...}}
with the values of the columns the mapping reads. Lines are written when their chunk is
committed, so after a crash between the two a rerun may write a chunk's rejects again
(at-least-once; `source` + `row` identify a line). The checkpoint's counts are exact.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from transforms.actions import ActionBatch

PRIVATE_FILE_MODE = 0o600


def _default(v: object) -> object:
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    return str(v)


def _python_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows as dicts; a column Python cannot hold (a timestamp or date beyond year 9999,
    which is often why the row was rejected) is given as Arrow's text of each value instead."""
    columns: dict[str, list[Any]] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            columns[name] = column.to_pylist()
        except (ValueError, OverflowError):
            columns[name] = column.cast(pa.string()).to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(batch.num_rows)]


class RejectsWriter:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self.lines = 0

    def entries(
        self, source: str, start_row: int, batch: pa.RecordBatch, result: ActionBatch
    ) -> list[dict[str, Any]]:
        if not len(result.rejected):
            return []
        rows = _python_rows(batch.take(pa.array(result.rejected)))
        return [
            {"source": source, "row": start_row + int(pos) + 1, "reason": reason, "values": vals}
            for pos, reason, vals in zip(result.rejected, result.reasons, rows, strict=True)
        ]

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries or self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Rejects hold customer data: readable by the owner only.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        for e in entries:
            self._fh.write(json.dumps(e, default=_default, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.lines += len(entries)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
