"""The ID ledger of `redrive` (RedriveSettings.ledger): one row per action of each chunk it
commits, and one per undecodable line, saying what became of it.

Same layout as `run`'s ledger (pipeline/ledger.py, connectors/ledger_store.py): Parquet files
under ``<location>/job=<job>/``, one per chunk, named by the object and the chunk's first line
(`chunk_name`), written after the sink acknowledged the chunk and before its checkpoint commit
(a failed write commits nothing: the chunk's future fails with the LedgerError). Columns
(`REDRIVE_LEDGER_SCHEMA`): `run`'s, with the same meaning and status vocabulary (`source`
is the object's s3:// URL, `action_time` the action's `request.time`, `row` null), then `line`
(1-based, of the decompressed object), `action` (the action's position in its record; null
for an undecodable line) and `etag` (the object's ETag). DuckDB reads both jobs' files with
`union_by_name=true` (the columns one kind lacks are null).

Chunks a rerun skips are not written again. As in `run`, a chunk whose too-old actions a
later `--allow-older-than-30-days` run sends keeps its earlier file (those rows `too_old`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.ledger_store import LedgerStore, make_ledger_store
from connectors.s3_listing import ObjectInfo
from moesif_backfill.errors import LedgerError, PreflightError
from pipeline.ledger import LEDGER_SCHEMA, chunk_name, publish_after_ack
from pipeline.redrive_chunks import ChunkWork, LedgerEntries
from pipeline.redrive_settings import RedriveSettings

_UTC_US = pa.timestamp("us", tz="UTC")
REDRIVE_LEDGER_SCHEMA = pa.schema(
    [
        *(f.with_nullable(True) if f.name == "row" else f for f in LEDGER_SCHEMA),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("action", pa.int64()),
        pa.field("etag", pa.string(), nullable=False),
    ]
)


def refused_entries(
    entries: LedgerEntries, positions: list[int], refused: tuple[tuple[int, str], ...]
) -> LedgerEntries:
    """`entries` with the records the sink refused for good (`Delivery.refused`: (index in the
    chunk's records, reason)) `rejected`, with the rejects file's reason. `positions`: each
    record's row (`ChunkWork.entries`)."""
    status, reason = list(entries.status), list(entries.reason)
    for index, why in refused:
        status[positions[index]] = "rejected"
        reason[positions[index]] = f"refused: {why}"
    return LedgerEntries(
        entries.line, entries.action, entries.transaction_id, entries.time_us, status, reason
    )


def redrive_rows(
    info: ObjectInfo, entries: LedgerEntries, *, dry_run: bool, run_id: str, written_at: dt.datetime
) -> pa.Table:
    """The ledger rows of one chunk of object `info` (ordered by line and action)."""
    n = len(entries.line)
    status = pa.array(entries.status, pa.string())
    if dry_run:
        status = pc.if_else(pc.equal(status, "sent"), "would_send", status)
    table = pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(info.url, pa.string()), n),
            pa.nulls(n, pa.int64()),  # `row`: run's
            pa.array(entries.transaction_id, pa.string()),
            pa.array(entries.time_us, pa.int64()).cast(_UTC_US),
            status,
            pa.array(entries.reason, pa.string()),
            pa.repeat(pa.scalar(run_id, pa.string()), n),
            pa.repeat(pa.scalar(written_at, _UTC_US), n),
            pa.array(entries.line, pa.int64()),
            pa.array(entries.action, pa.int64()),
            pa.repeat(pa.scalar(info.etag, pa.string()), n),
        ],
        schema=REDRIVE_LEDGER_SCHEMA,
    )
    return table.sort_by([("line", "ascending"), ("action", "ascending")])


class RedriveLedger:
    """Writes a redrive's chunk files. `after_ack` encodes a chunk's file on the ledger thread
    while the chunk is in flight; once the sink acknowledged it the file is published (with
    the records the sink refused as `rejected`), and only then is the returned future done:
    the runner commits a chunk after its ledger file exists."""

    def __init__(self, store: LedgerStore, *, job: str, run_id: str, dry_run: bool) -> None:
        self.store, self.job, self.run_id, self.dry_run = store, job, run_id, dry_run
        # One thread, first in first out: a file is prepared before its publish is taken up.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redrive-ledger")

    def rows(self, info: ObjectInfo, entries: LedgerEntries) -> pa.Table:
        now = dt.datetime.now(dt.UTC)
        return redrive_rows(info, entries, dry_run=self.dry_run, run_id=self.run_id, written_at=now)

    def after_ack(
        self, acked: Future[Any], info: ObjectInfo, first_line: int, work: ChunkWork
    ) -> Future[Any]:
        """A future done when `acked` (the sink's, for the chunk of `info` whose first line is
        the 0-based `first_line`) is done and the chunk's file was then written: `acked`'s
        result, or its error, or the LedgerError of a file that could not be written."""
        name = chunk_name(info.url, first_line)
        staged = self.pool.submit(self.store.prepare, self.job, name, self.rows(info, work.ledger))
        return publish_after_ack(
            acked,
            staged,
            self.store,
            self.pool,
            lambda refused: self.store.prepare(
                self.job, name, self.rows(info, refused_entries(work.ledger, work.entries, refused))
            ),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def open_redrive_ledger(
    s: RedriveSettings, job: str, s3_client: Any, stack: contextlib.ExitStack
) -> RedriveLedger | None:
    """The run's ledger of `s.ledger` (None without one; a new run_id), closed with `stack`,
    its location checked before anything is sent (PreflightError). S3: written with the run's
    S3 client (its credentials and --s3-endpoint-url)."""
    if s.ledger is None:
        return None
    try:
        store = make_ledger_store(s.ledger, s3_client if s.ledger_is_s3 else None)
        store.check(job)
    except LedgerError as exc:
        raise PreflightError(f"{exc} Nothing was sent.".replace(_NOT_COMMITTED, "")) from None
    ledger = RedriveLedger(store, job=job, run_id=str(uuid.uuid4()), dry_run=s.mode == "dry-run")
    stack.callback(ledger.close)
    return ledger


_NOT_COMMITTED = " (the chunk was not committed: a rerun sends it again)"


__all__ = [
    "REDRIVE_LEDGER_SCHEMA",
    "RedriveLedger",
    "open_redrive_ledger",
    "redrive_rows",
    "refused_entries",
]
