"""The ID ledger (RunSettings.ledger): one row per input row of a job, saying what became of it.

Columns (`LEDGER_SCHEMA`): `source` (path or s3:// URL), `row` (1-based data row in that file,
as in the rejects file), `transaction_id` (null when the row has no usable key),
`action_time` (UTC, null when missing or unparseable), `status`, `reason` (rejects only),
`run_id` (a UUID per run), `written_at`. The job is the partition folder (`job=<job>/`).

Status: `sent` (acknowledged by the sink), `would_send` (a dry run's accepted rows),
`rejected`, `outside_window` (RunSettings.window_start/_end), `too_old` (rows a run leaves out
for being older than Moesif's 30-day window).

One Parquet file per chunk of a source, named by the source and the chunk's first row
(`chunk_name`), written after the sink acknowledged the chunk and before its checkpoint commit
(pipeline/engine.py). A crash between the two resends the chunk on the rerun, which overwrites
the same file: the union of the files is one row per row read so far, and a `sent` row was
always acknowledged. Chunks a rerun skips are not written again. The rows are built
column-wise (`ledger_rows`, pure); `connectors/ledger_store.py` writes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.ledger_store import LedgerStore, Staged, make_ledger_store
from connectors.s3_store import S3Store
from moesif_backfill.errors import LedgerError, PreflightError
from pipeline.resources import s3_store
from pipeline.settings import RunSettings
from transforms.actions import ActionBatch, row_ids_and_times
from transforms.mapping import MappingSpec

T = TypeVar("T")

STATUSES = ("sent", "would_send", "rejected", "outside_window", "too_old")
_STATUS_TEXT = pa.array(STATUSES, pa.string())
_UTC_US = pa.timestamp("us", tz="UTC")

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("transaction_id", pa.string()),
        pa.field("action_time", _UTC_US),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("written_at", _UTC_US, nullable=False),
    ]
)


def publish_after_ack(
    acked: Future[T],
    staged: Future[Staged],
    store: LedgerStore,
    pool: ThreadPoolExecutor,
    restage: Callable[[tuple[tuple[int, str], ...]], Staged],
) -> Future[T]:
    """A future done when `acked` (the sink's future for a chunk) is done and the chunk's
    `staged` ledger file was then published: `acked`'s result; `acked`'s error (the file is
    discarded), or the error of a file that could not be written (the chunk must not be
    committed). When the sink refused records (a `pipeline.sinks.Delivery`), the file is
    staged again by `restage(refused)` with those as rejected. Runs on `pool` (one thread:
    a file is prepared before its publish is taken up)."""
    done: Future[T] = Future()

    def publish() -> None:
        try:
            value = acked.result()
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                store.discard(staged.result())
            done.set_exception(exc)
            return
        try:
            ready = staged.result()
            refused = getattr(value, "refused", ())
            if refused:  # a pipeline.sinks.Delivery: those records are rejected, not sent
                store.discard(ready)
                ready = restage(refused)
            store.publish(ready)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(value)

    acked.add_done_callback(lambda _f: pool.submit(publish))
    return done


def chunk_name(source: str, first_row: int) -> str:
    """The file name of the chunk of `source` starting at 0-based file row `first_row`: the
    same on every run, so a resent chunk overwrites its file."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:24]
    return f"{digest}-{first_row:012d}.parquet"


def ledger_rows(
    *,
    source: str,
    first_row: int,
    n: int,
    result: ActionBatch,
    accepted_status: str,
    run_id: str,
    written_at: dt.datetime,
    left_out: Mapping[str, np.ndarray] | None = None,
    left_out_ids: pa.Array | None = None,
    left_out_times_us: pa.Array | None = None,
) -> pa.Table:
    """The ledger rows of one chunk of `n` rows (0-based file row `first_row` first).

    `result`: `build_actions` over the chunk's rows that were not left out, its `accepted` and
    `rejected` as positions in the chunk. `left_out`: status -> positions in the chunk of rows
    not built into actions (outside_window, too_old); `left_out_ids` / `left_out_times_us`:
    their ids and times (`row_ids_and_times`), in the order of those positions concatenated
    (by `left_out`'s order). Column-wise: no loop over rows."""
    left_out = dict(left_out or {})
    status = np.full(n, -1, dtype=np.int64)
    status[result.accepted] = STATUSES.index(accepted_status)
    status[result.rejected] = STATUSES.index("rejected")
    out_pos = [np.asarray(p, dtype=np.int64) for p in left_out.values()]
    for name, positions in zip(left_out, out_pos, strict=True):
        status[positions] = STATUSES.index(name)
    if (status < 0).any():
        missing = int((status < 0).sum())
        raise ValueError(f"ledger: {missing} row(s) of the chunk have no status")
    ids, times = _scatter(n, result, out_pos, left_out_ids, left_out_times_us)
    reason_idx = np.zeros(n, dtype=np.int64)
    reason_idx[result.rejected] = np.arange(1, len(result.rejected) + 1)
    reasons = pc.take(pa.array([None, *result.reasons], pa.string()), pa.array(reason_idx))
    rows = pa.array(np.arange(first_row + 1, first_row + n + 1, dtype=np.int64))
    return pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(source, pa.string()), n),
            rows,
            ids,
            times.cast(pa.int64()).cast(_UTC_US),
            pc.take(_STATUS_TEXT, pa.array(status)),
            reasons,
            pa.repeat(pa.scalar(run_id, pa.string()), n),
            pa.repeat(pa.scalar(written_at, _UTC_US), n),
        ],
        schema=LEDGER_SCHEMA,
    )


def _scatter(
    n: int,
    result: ActionBatch,
    out_pos: list[np.ndarray],
    out_ids: pa.Array | None,
    out_times: pa.Array | None,
) -> tuple[pa.Array, pa.Array]:
    """The ids and times of the chunk's `n` rows, in chunk order, from those of the rows built
    into actions (`result.row_ids`/`row_times_us`, in chunk order) and of the left-out ones."""
    if result.row_ids is None or result.row_times_us is None:
        raise ValueError("ledger: the ActionBatch lacks row_ids/row_times_us")
    built_ids, built_times = result.row_ids, result.row_times_us
    left = np.concatenate(out_pos) if out_pos else np.zeros(0, dtype=np.int64)
    if not len(left):
        return built_ids, built_times
    assert out_ids is not None and out_times is not None
    inside = np.ones(n, dtype=bool)
    inside[left] = False
    index = np.empty(n, dtype=np.int64)
    n_in = int(inside.sum())
    index[np.flatnonzero(inside)] = np.arange(n_in)
    index[left] = np.arange(n_in, n_in + len(left))
    take = pa.array(index)
    ids = pa.concat_arrays([built_ids.cast(pa.string()), out_ids.cast(pa.string())])
    times = pa.concat_arrays([built_times.cast(pa.int64()), out_times.cast(pa.int64())])
    return pc.take(ids, take), pc.take(times, take)


def refuse_rows(
    table: pa.Table, accepted: np.ndarray, refused: tuple[tuple[int, str], ...]
) -> pa.Table:
    """A chunk's ledger rows with the records the sink refused for good (`Delivery.refused`:
    (index in the chunk's records, reason)) as `rejected` with their reason. `accepted`: the
    chunk position of each record (`ActionBatch.accepted`)."""
    positions = accepted[np.fromiter((i for i, _ in refused), dtype=np.int64)]
    status = np.asarray(
        pc.index_in(table.column("status"), value_set=_STATUS_TEXT).to_numpy(zero_copy_only=False)
    ).astype(np.int64)
    status[positions] = STATUSES.index("rejected")
    reasons = table.column("reason").to_pylist()
    for pos, (_, reason) in zip(positions, refused, strict=True):
        reasons[int(pos)] = reason
    out = table.set_column(
        table.schema.get_field_index("status"),
        LEDGER_SCHEMA.field("status"),
        pc.take(_STATUS_TEXT, pa.array(status)),
    )
    return out.set_column(
        out.schema.get_field_index("reason"),
        LEDGER_SCHEMA.field("reason"),
        pa.array(reasons, pa.string()),
    )


class ShardLedger:
    """The ledger of one shard's chunks. `after_ack` builds a chunk's rows when it is handed to
    the sink and encodes its file on the shard's ledger thread while the chunk is in flight;
    once the sink acknowledged it, the file is published (on that thread too) and only then
    is the chunk's future done: the engine commits a chunk after its ledger file exists."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        job: str,
        run_id: str,
        source: str,
        first_row: int,
        spec: MappingSpec,
        dry_run: bool,
    ) -> None:
        self.store, self.job, self.run_id = store, job, run_id
        self.source, self.first_row, self.spec = source, first_row, spec
        self.accepted_status = "would_send" if dry_run else "sent"
        # One thread, first in first out: a chunk's file is always prepared before the
        # publish that waits for it is taken up.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    def rows(
        self,
        start_row: int,
        batch: pa.RecordBatch,
        result: ActionBatch,
        left_out: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[int, pa.Table]:
        """(the chunk's first file row, its ledger rows). `start_row`: the chunk's first row
        in the shard; `batch`: all its rows (logical columns); `left_out`: see `ledger_rows`
        (None: the rows neither accepted nor rejected are `outside_window`)."""
        first = self.first_row + start_row
        if left_out is None:  # every row not built into actions was outside the window
            built = np.zeros(batch.num_rows, dtype=bool)
            built[result.accepted] = True
            built[result.rejected] = True
            left_out = {"outside_window": np.flatnonzero(~built)}
        out_ids = out_times = None
        positions = [p for p in left_out.values() if len(p)]
        if positions:
            out_ids, out_times = row_ids_and_times(
                batch.take(pa.array(np.concatenate(positions))), self.spec
            )
        table = ledger_rows(
            source=self.source,
            first_row=first,
            n=batch.num_rows,
            result=result,
            accepted_status=self.accepted_status,
            run_id=self.run_id,
            written_at=dt.datetime.now(dt.UTC),
            left_out={k: v for k, v in left_out.items() if len(v)},
            left_out_ids=out_ids,
            left_out_times_us=out_times,
        )
        return first, table

    def after_ack(
        self,
        acked: Future[T],
        start_row: int,
        batch: pa.RecordBatch,
        result: ActionBatch,
        left_out: Mapping[str, np.ndarray] | None = None,
    ) -> Future[T]:
        """A future done when `acked` (the sink's, for this chunk) is done and the chunk's
        ledger file was then written: its result is `acked`'s; its error `acked`'s, or a
        LedgerError when the file could not be written (the chunk must not be committed)."""
        first, table = self.rows(start_row, batch, result, left_out)
        name = chunk_name(self.source, first)
        staged = self.pool.submit(self.store.prepare, self.job, name, table)
        return publish_after_ack(
            acked,
            staged,
            self.store,
            self.pool,
            lambda refused: self.store.prepare(
                self.job, name, refuse_rows(table, result.accepted, refused)
            ),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def open_ledger(settings: RunSettings, session: Any, s3: S3Store | None) -> LedgerStore:
    """The ledger store of `settings.ledger` (S3: with the run's S3 client, else one from the
    session and --s3-endpoint-url)."""
    assert settings.ledger is not None
    client = None
    if settings.ledger_is_s3:
        client = (s3 if s3 is not None else s3_store(settings, session)).client
    return make_ledger_store(settings.ledger, client)


def check_ledger(settings: RunSettings, job: str, session: Any, s3: S3Store | None) -> None:
    """Preflight: the ledger location can take the job's files (PreflightError: nothing sent)."""
    if settings.ledger is None or settings.mode == "validate":
        return
    try:
        open_ledger(settings, session, s3).check(job)
    except LedgerError as exc:
        raise PreflightError(
            f"{exc} Nothing was sent.".replace(
                " (the chunk was not committed: a rerun sends it again)", ""
            )
        ) from None


__all__ = [
    "LEDGER_SCHEMA",
    "STATUSES",
    "ShardLedger",
    "check_ledger",
    "chunk_name",
    "ledger_rows",
    "open_ledger",
    "refuse_rows",
]
