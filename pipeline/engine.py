"""The pipeline for one input file: read -> encode -> send -> commit, chunk by chunk.

Plain Python (no Prefect), so it is testable directly. A chunk is a fixed row range of the file
(chunk i = rows [i*C, (i+1)*C)), so a rerun finds the same chunks. A chunk is committed to the
checkpoint only after the sink acknowledged every record in it; several chunks may be in flight
at once and they may finish in any order. On a delivery failure no new chunk is started, the
chunks in flight are allowed to finish (and are committed if they succeed), and the error is
raised: the checkpoint then holds exactly what was delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from connectors.checkpoint import CheckpointStore, FileProgress
from moesif_backfill import failpoints
from moesif_backfill.errors import BackfillError, SourceError
from pipeline.counts import Counts
from pipeline.day_window import outside_window, window_us
from pipeline.ledger import ShardLedger
from pipeline.plan import FilePlan, Plan, file_progress
from pipeline.rejects import RejectsWriter
from pipeline.row_filter import split_rows
from pipeline.sinks import Sink, delivery_of
from transforms.actions import ActionBatch, build_actions

log = logging.getLogger(__name__)

PREFETCH_DEPTH = 2


class ProgressListener(Protocol):
    def rows_done(self, n: int) -> None: ...


def rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[tuple[int, pa.Table]]:
    """Regroup a file's batches into chunks of exactly `rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    index = 0
    for batch in batches:
        failpoints.hit("reader.batch")
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield index, table.slice(0, rows)
            index += 1
            rest = table.slice(rows)
            pending = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield index, pa.Table.from_batches(pending)


def prefetch(it: Iterator[Any], depth: int = PREFETCH_DEPTH) -> Iterator[Any]:
    """Run `it` on a background thread (Arrow decoding releases the GIL), `depth` items ahead."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:
            q.put(("error", exc))

    worker = threading.Thread(target=run, name="reader", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


class HasFuture(Protocol):
    @property
    def future(self) -> Future[Any]: ...


F = TypeVar("F", bound=HasFuture)


def drain(inflight: list[F], block_until: int, finish: Callable[[F], None]) -> None:
    """`finish` (commit) the chunks of `inflight` whose future is done, removing them; wait
    while more than `block_until` chunks are in flight."""
    while inflight:
        done = [f for f in inflight if f.future.done()]
        if not done:
            if len(inflight) <= block_until:
                return
            wait([f.future for f in inflight], return_when=FIRST_COMPLETED)
            continue
        for item in done:
            inflight.remove(item)
            finish(item)


@dataclass
class _InFlight:
    chunk: int
    future: Future[Any]  # the sink's (pipeline.sinks.SinkFuture), after the ledger's
    sent: int
    rejected: int
    rejects: list[dict[str, Any]]
    outside: int = 0
    # What a record the sink refuses (`Delivery.refused`) is rejected as: the chunk's rows,
    # its first row, and the row position of each record.
    batch: pa.RecordBatch | None = None
    start_row: int = 0
    accepted: np.ndarray | None = None
    too_old: int = 0  # rows deferred (--skip-older-than-30-days), see FileProgress.deferred
    # A chunk committed earlier whose deferred rows are sent now: its other rows, counted
    # when this send is acknowledged (delivered and rejected by the earlier run).
    settles: bool = False
    earlier_sent: int = 0
    earlier_rejected: int = 0
    earlier_outside: int = 0


class FileRunner:
    """Runs one file through the pipeline, committing each acknowledged chunk."""

    def __init__(
        self,
        plan: Plan,
        fp: FilePlan,
        *,
        index: int,
        sink: Sink,
        store: CheckpointStore | None,
        rejects: RejectsWriter,
        progress: ProgressListener | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        counted_this_run: set[int] | None = None,
        ledger: ShardLedger | None = None,
    ) -> None:
        self.plan, self.fp, self.index = plan, fp, index
        self.sink, self.store, self.rejects = sink, store, rejects
        self.progress, self.ledger = progress, ledger
        self.should_stop = should_stop
        self.counts = Counts()
        self.prog: FileProgress = file_progress(plan, fp)
        self.window = window_us(plan.settings)
        self.too_old_before = plan.too_old_before_us
        # Rows an earlier run left pending as too old are sent (only) with this flag.
        self.send_deferred = plan.settings.allow_older_than_30_days
        # Fields this file's rows go without (their column is missing: if_missing: omit).
        self.omitted = [
            label
            for label, src in plan.spec.column_fields().items()
            if src.column in fp.read.missing
        ]
        self.inflight: list[_InFlight] = []
        self.error: BaseException | None = None
        # Chunks whose rows an earlier attempt of this same run already counted (a retry of the
        # file): committed by it (sent/rejected) or skipped by it (delivered by an earlier run).
        # They are counted once per run, never again as "skipped".
        self.counted_this_run = counted_this_run if counted_this_run is not None else set()

    def run(self) -> Counts:
        prog = self.prog
        settled = prog.delivered or (prog.complete and not self.send_deferred)
        if settled and not self.counted_this_run:
            self.counts.add_earlier(
                sent=prog.rows_sent,
                rejected=prog.rows_rejected,
                outside=prog.rows_outside_window,
                deferred=prog.rows_deferred,
            )
            n = prog.rows_sent + prog.rows_rejected
            self._progress(n + prog.rows_outside_window + prog.rows_deferred)
            log.info("%s: already delivered by an earlier run (%d rows)", self.fp.src.key, n)
            return self.counts
        # Start fetching the next object while this one is read and sent (S3: no idle network).
        if self.plan.s3 is not None:
            self.plan.s3.prefetch([f.src for f in self.plan.files], self.index)
        self.sink.open_file(self.index, self.fp.src.path)
        try:
            self._stream()
        finally:
            self.sink.close_file()
        if self.error is not None:
            raise self.error
        return self.counts

    def _stream(self) -> None:
        prog, fp = self.prog, self.fp
        # connectors.readers.iter_batches with the mapping's source: options, partition values,
        # and each column cast to the type it has across all files (schema drift).
        batches = fp.batches(batch_rows=min(65_536, max(prog.chunk_rows, 1024)), s3=self.plan.s3)
        chunks_seen = 0
        limit = self.plan.settings.chunks_in_flight
        try:
            for chunk, table in prefetch(rechunk(batches, prog.chunk_rows)):
                chunks_seen = chunk + 1
                resend = prog.is_done(chunk) and chunk in prog.deferred and self.send_deferred
                if prog.is_done(chunk) and not resend:
                    if chunk not in self.counted_this_run:
                        self.counted_this_run.add(chunk)
                        self._count_done(chunk, table)
                    continue
                self._submit(chunk, table)
                self._drain(block_until=limit - 1)
                if self.error is not None or self.should_stop():
                    break
            else:
                prog.total_chunks = chunks_seen
        except SourceError:
            self._drain(block_until=0)
            raise
        self._drain(block_until=0)
        if prog.total_chunks is not None and self.error is None:
            self._commit()  # records that the file was read to its end

    def _logical(self, table: pa.Table) -> pa.RecordBatch:
        return self.fp.resolved.to_logical(table.combine_chunks().to_batches()[0])

    def _outside_count(self, table: pa.Table) -> int:
        if self.window is None:
            return 0
        return int(outside_window(self._logical(table), self.plan.spec, self.window).sum())

    def _count_done(self, chunk: int, table: pa.Table) -> None:
        """A chunk an earlier run committed, counted once by this run: its rows as that run
        left them (rejected, deferred as too old, outside the window, the rest delivered).
        A checkpoint written before rejects were kept per chunk counts them as delivered."""
        outside = self._outside_count(table)
        rejected = self.prog.chunk_rejects.get(chunk, 0)
        deferred = self.prog.deferred[chunk][1] if chunk in self.prog.deferred else 0
        sent = table.num_rows - outside - rejected - deferred
        self.counts.add_earlier(sent=sent, rejected=rejected, outside=outside, deferred=deferred)
        self._progress(table.num_rows)

    def _submit(self, chunk: int, table: pa.Table) -> None:
        batch = self._logical(table)
        start_row = chunk * self.prog.chunk_rows
        resend = self.prog.deferred.get(chunk)  # (cutoff, rows): send those rows only
        split = split_rows(
            batch,
            self.plan.spec,
            window=self.window,
            too_old_before=self.too_old_before if resend is None else None,
            only_before=None if resend is None else resend[0],
        )
        work, inside = batch, split.picked  # inside: positions of the rows to send
        if inside is not None:
            work = batch.take(pa.array(inside))
        result: ActionBatch = build_actions(
            work,
            self.plan.spec,
            number_text=self.fp.number_text_fields(),
            max_action_bytes=self.plan.settings.max_action_bytes,
        )
        if inside is not None:  # reject rows by their position in the chunk, not in `work`
            result = replace(
                result, accepted=inside[result.accepted], rejected=inside[result.rejected]
            )
        self.counts.metadata_nonfinite_omitted += result.counters["metadata_nonfinite_omitted"]
        low = result.min_time_us
        if low is not None:
            self.counts.min_time_us = (
                low if self.counts.min_time_us is None else min(self.counts.min_time_us, low)
            )
        if len(self.counts.sample) < 3 and len(result.records):
            self.counts.sample.extend(result.records.slice(0, 3).to_pylist())
            del self.counts.sample[3:]
        rejects = self.rejects.entries(self.fp.src.path, start_row, batch, result)
        future: Future[Any] = self.sink.submit(result.records)
        # Done once acknowledged AND its ledger file written. Not when an earlier run's
        # deferred rows are sent: that chunk's ledger file (those rows too_old) stays.
        if self.ledger is not None and resend is None:
            left_out = None
            if split.too_old_at is not None:
                built = np.zeros(batch.num_rows, dtype=bool)
                built[result.accepted] = built[result.rejected] = True
                built[split.too_old_at] = True
                left_out = {"outside_window": np.flatnonzero(~built), "too_old": split.too_old_at}
            future = self.ledger.after_ack(future, start_row, batch, result, left_out)
        failpoints.hit("chunk.submitted")
        item = _InFlight(
            chunk, future, len(result.records), len(result.rejected), rejects, split.outside
        )
        item.too_old = split.too_old
        item.batch, item.start_row, item.accepted = batch, start_row, result.accepted
        if resend is not None:  # the chunk's other rows: as the earlier run committed them
            rejected = self.prog.chunk_rejects.get(chunk, 0)
            item.settles, item.outside = True, 0
            item.earlier_outside, item.earlier_rejected = split.outside, rejected
            item.earlier_sent = split.rows - split.picked_count - split.outside - rejected
        self.inflight.append(item)

    def _drain(self, *, block_until: int) -> None:
        drain(self.inflight, block_until, self._finish)

    def _finish(self, item: _InFlight) -> None:
        exc = item.future.exception()
        if exc is not None:
            if self.error is None:
                self.error = exc
            log.error("%s chunk %d not delivered: %s", self.fp.src.key, item.chunk, exc)
            return
        failpoints.hit("chunk.acknowledged")
        self._refused(item, delivery_of(item.future.result()).refused)
        self.rejects.write(item.rejects)
        if item.settles:  # the rows an earlier run left pending as too old
            self.prog.settle_deferred(item.chunk, sent=item.sent, rejected=item.rejected)
            earlier = item.earlier_sent + item.earlier_rejected + item.earlier_outside
            self.counts.add_earlier(
                sent=item.earlier_sent,
                rejected=item.earlier_rejected,
                outside=item.earlier_outside,
                deferred=0,
            )
            self._progress(earlier)
        else:
            deferred = (self.too_old_before or 0, item.too_old) if item.too_old else None
            self.prog.mark_done(
                item.chunk,
                sent=item.sent,
                rejected=item.rejected,
                outside=item.outside,
                deferred=deferred,
            )
        self.counted_this_run.add(item.chunk)
        self.counts.rows_read += item.sent + item.rejected + item.outside + item.too_old
        self.counts.actions_sent += item.sent
        self.counts.rows_rejected += item.rejected
        self.counts.rows_outside_window += item.outside
        self.counts.rows_too_old += item.too_old
        self.counts.chunks_committed += 1
        for label in self.omitted:
            n = self.counts.sent_without_field.get(label, 0) + item.sent
            self.counts.sent_without_field[label] = n
        self._commit()
        self._progress(item.sent + item.rejected + item.outside + item.too_old)

    def _refused(self, item: _InFlight, refused: tuple[tuple[int, str], ...]) -> None:
        """Records the sink refused for good (e.g. 413 from Moesif's Collector API for one
        action alone) are rejected rows: counted, checkpointed and written as rejects."""
        if not refused:
            return
        assert item.batch is not None and item.accepted is not None
        positions = item.accepted[np.fromiter((i for i, _ in refused), dtype=np.int64)]
        reasons = [reason for _, reason in refused]
        item.rejects = item.rejects + self.rejects.rows(
            self.fp.src.path, item.start_row, item.batch, positions, reasons
        )
        item.sent -= len(refused)
        item.rejected += len(refused)
        log.warning(
            "%s chunk %d: %d action(s) refused by the destination, rejected",
            self.fp.src.key,
            item.chunk,
            len(refused),
        )

    def _commit(self) -> None:
        if self.store is not None:
            self.store.commit(self.plan.state)

    def _progress(self, n: int) -> None:
        if self.progress is not None:
            self.progress.rows_done(n)


__all__ = ["BackfillError", "Counts", "FileRunner", "ProgressListener", "drain", "rechunk"]
