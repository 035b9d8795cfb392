"""The rejects file: one NDJSON line per row that could not become a valid action.

Each line: {"source": file, "row": 1-based data row in that file, "reason": ..., "values": {...}}
with the values of the columns the mapping reads. Lines are written when their chunk is
committed, so after a crash between the two a rerun may write a chunk's rejects again
(at-least-once; `source` + `row` identify a line). The checkpoint's counts are exact.

The file holds the rows rejected and not sent since: when a file is sent again (--reprocess,
--reset) its lines are dropped first (`drop_rejects`), so a row fixed since disappears.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from pipeline.send_settings import SendSettings
from pipeline.settings import DEFAULT_REJECTS_DIR
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
        return self.rows(source, start_row, batch, result.rejected, result.reasons)

    def rows(
        self,
        source: str,
        start_row: int,
        batch: pa.RecordBatch,
        positions: Any,
        reasons: list[str],
    ) -> list[dict[str, Any]]:
        """The lines of the rows at `positions` of `batch` (its first row: `start_row`), each
        rejected for its reason."""
        if not len(positions):
            return []
        rows = _python_rows(batch.take(pa.array(positions)))
        return [
            {"source": source, "row": start_row + int(pos) + 1, "reason": reason, "values": vals}
            for pos, reason, vals in zip(positions, reasons, rows, strict=True)
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


def rejects_held(path: Path | None) -> bool:
    """Whether the rejects file at `path` lists any row."""
    try:
        return path is not None and path.stat().st_size > 0
    except FileNotFoundError:
        return False


def drop_rejects(path: Path, sources: set[str] | None) -> int:
    """Remove the lines of `sources` (their `source`; None: every line) from the rejects file
    at `path`, atomically (a reader sees the old or the new file), under the same flock the
    shards' writers take; returns how many lines were dropped. No file: nothing to do."""
    if not path.exists():
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        kept: list[str] = []
        dropped = 0
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if sources is not None and _source(line) not in sources:
                    kept.append(line)
                else:
                    dropped += 1
        if dropped:
            tmp_fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(tmp_fd, PRIVATE_FILE_MODE)
                with os.fdopen(tmp_fd, "w", encoding="utf-8") as out:
                    out.writelines(kept)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    finally:
        os.close(fd)
    return dropped


def _source(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None  # a torn last line (a crash while writing): kept, it names no file
    return entry.get("source") if isinstance(entry, dict) else None


def job_rejects_path(s: SendSettings, job: str, mode: str, out: Path | None) -> Path | None:
    """A job's rejects file (`run` and `redrive` alike): --rejects; else for a send beside the
    local checkpoint (`<checkpoint>/<job>/rejects.ndjson`), or in a local directory when the
    checkpoint is on S3; for a dry run in its --out directory; none for validate."""
    if s.rejects is not None:
        return s.rejects
    if mode == "send" and s.checkpoint_is_s3:
        return DEFAULT_REJECTS_DIR / f"{job}.ndjson"
    if mode == "send":
        return Path(s.checkpoint) / job / "rejects.ndjson"
    if mode == "dry-run" and out is not None:
        return out / "rejects.ndjson"
    return None
