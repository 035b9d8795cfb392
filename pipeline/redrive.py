"""`moesif-backfill redrive`: re-send the actions of Firehose's failed-delivery objects.

Plain Python (no Prefect). `run_redrive(settings)` lists the objects under the location,
checks the job's checkpoint against them, makes one preflight pass (the report by errorCode and
arrival day; Moesif's 30-day rule), then sends object after object, chunk after chunk, through
`pipeline.resources.send_sink` (or a `DryRunSink`). As in `run` (pipeline/engine.py): several
chunks are in flight; a chunk is committed only after the sink acknowledged every record of it
(records the destination refused for good, `Delivery.refused`, become rejects); on a failure no
new chunk starts, the chunks in flight finish and are committed if acknowledged, and the error
is raised: the checkpoint holds exactly what was delivered. With --delete-after an object is
deleted only once all its chunks are committed and none of its actions was rejected, outside
the window or left pending.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from connectors.checkpoint import CheckpointStore, FileProgress
from connectors.failed_delivery import delete_object, error_location, list_location, read_object
from connectors.s3_listing import ObjectInfo
from moesif_backfill import failpoints
from moesif_backfill.errors import BackfillError
from pipeline import resources
from pipeline.engine import ProgressListener, drain
from pipeline.late_window import cutoff_us
from pipeline.redrive_chunks import ChunkWork, build_chunk, build_resend, done_counts, reject_entry
from pipeline.redrive_ledger import RedriveLedger, open_redrive_ledger
from pipeline.redrive_plan import (
    RedrivePlan,
    chunk_lines,
    keep_reason,
    load_redrive_state,
    preflight,
    progress_of,
)
from pipeline.redrive_report import RedriveCounts, RedriveOutcome, RedriveSummary, Report
from pipeline.redrive_retry import send_with_retries
from pipeline.redrive_settings import RedriveSettings, default_redrive_job
from pipeline.rejects import RejectsWriter, drop_rejects, job_rejects_path, rejects_held
from pipeline.report import write_json_atomic
from pipeline.sinks import DryRunSink, Sink, delivery_of
from transforms.failed_records import decode_object

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    info: ObjectInfo
    prog: FileProgress
    chunk: int
    future: Future[Any]
    work: ChunkWork


class Redrive:
    def __init__(
        self,
        settings: RedriveSettings,
        progress: ProgressListener | None = None,
        stop: threading.Event | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self.s = settings
        self.progress = progress
        self.stop = stop if stop is not None else threading.Event()
        self.now = now or dt.datetime.now(dt.UTC)
        self.started = time.monotonic()
        self.loc = error_location(settings.location)
        self.job = settings.job or default_redrive_job(self.loc.url)
        self.counts = RedriveCounts()
        self.plan: RedrivePlan | None = None
        self.store: CheckpointStore | None = None
        self.sink: Sink | None = None
        self.rejects: RejectsWriter | None = None
        self.ledger: RedriveLedger | None = None  # --ledger (pipeline/redrive_ledger.py)
        self.s3: Any = None
        self.inflight: list[_InFlight] = []
        self.error: BaseException | None = None
        self.settled: set[str] = set()  # objects counted as complete (and deleted or kept)
        self.counted: dict[str, set[int]] = {}  # chunks of each object counted by this run
        self.deleted: list[str] = []
        self.kept: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> RedrivePlan:
        s = self.s
        if self.loc.note:
            log.warning("%s", self.loc.note)
        resources.check_sink(s)  # --sink moesif: the application id, before anything is read
        session = resources.open_aws(s)
        self.s3 = resources.s3_store(s, session)
        self._stack.callback(self.s3.close)
        if s.mode == "send":
            self.store = resources.checkpoint_store(s, session)
            self._stack.enter_context(self.store.lock(self.job))
            if s.reset:
                self.store.reset(self.job)
        objects = list_location(self.s3.client, self.loc, self.s3.shown_endpoint)
        state = load_redrive_state(s, self.store, self.job, objects)
        plan = RedrivePlan(self.job, self.loc.url, objects, state, cutoff_us(self.now))
        if self.loc.note:
            plan.warnings.append(self.loc.note)
        self.plan = plan
        path = job_rejects_path(s, self.job, s.mode, s.out)
        if path is not None and (s.mode != "send" or s.reset):
            drop_rejects(path, None)
        self.rejects = RejectsWriter(path)
        if not objects:
            return plan
        preflight(s, plan, self._read)
        self.ledger = open_redrive_ledger(s, self.job, self.s3.client, self._stack)
        if self.store is not None:
            self.store.commit(state)  # the checkpoint is writable, before sending
        if s.mode == "send":
            self.sink = resources.send_sink(s, session)
        else:
            assert s.out is not None
            self.sink = DryRunSink(s.out, resources.quota_of(s))
        if self.progress is not None:
            set_total = getattr(self.progress, "set_total", None)
            if set_total is not None:
                set_total(plan.actions_total)
        return plan

    def _read(self, info: ObjectInfo) -> bytes:
        return read_object(self.s3.client, info, self.s3.shown_endpoint)

    # ------------------------------------------------------------------ send
    @property
    def retry_budget_s(self) -> float:
        return self.s.retry_budget_s

    def unfinished(self) -> bool:
        return self.plan is not None and len(self.settled) < len(self.plan.objects)

    def send_pass(self) -> None:
        """One pass over the objects not yet done by this run; leaves `error` set on a failure
        (after the chunks in flight finished). pipeline/redrive_retry.py drives the passes."""
        assert self.plan is not None
        for index, info in enumerate(self.plan.objects):
            if self.error is not None or self.stop.is_set():
                break
            if info.url in self.settled:
                continue
            try:
                self._object(index, info)
            except Exception as exc:  # unreadable object, checkpoint or delete failure...
                self.error = self.error or exc
        self._drain(0)  # the chunks in flight finish, and are committed if acknowledged

    def _object(self, index: int, info: ObjectInfo) -> None:
        assert self.plan is not None and self.sink is not None
        s = self.s
        prog = progress_of(self.plan, info, s.chunk_rows)
        resend_old = s.allow_older_than_30_days
        if prog.delivered or (prog.complete and not resend_old):
            self.counts.add_earlier(
                sent=prog.rows_sent,
                rejected=prog.rows_rejected,
                outside=prog.rows_outside_window,
                deferred=prog.rows_deferred,
            )
            self._progress(
                prog.rows_sent + prog.rows_rejected + prog.rows_outside_window + prog.rows_deferred
            )
            self._settle(info, prog)
            return
        chunks = chunk_lines(decode_object(self._read(info)), prog.chunk_rows)
        if prog.total_chunks is None:
            prog.total_chunks = len(chunks)
        if not chunks:  # an empty object: nothing to send
            self._commit()
            self._settle(info, prog)
            return
        window = s.window_ms
        skip_before = self.plan.cutoff_us if s.skip_older_than_30_days else None
        self.sink.open_file(index, info.url)
        try:
            for chunk, lines in enumerate(chunks):
                resend = prog.deferred.get(chunk) if resend_old else None
                counted = self.counted.setdefault(info.url, set())
                if prog.is_done(chunk) and resend is None:
                    if chunk not in counted:  # once per run (also over retried passes)
                        counted.add(chunk)
                        self._count_done(prog, chunk, lines)
                    continue
                if resend is not None:
                    work = build_resend(
                        info.url, lines, window, resend[0], prog.chunk_rejects.get(chunk, 0)
                    )
                else:
                    limit = s.moesif_action_max_bytes if s.sink == "moesif" else None
                    work = build_chunk(info.url, lines, window, skip_before, limit)
                self.counts.lines_read += work.lines
                records = pa.array(work.records, pa.binary()).cast(pa.string())
                future = self.sink.submit(records)
                if self.ledger is not None and resend is None:  # done once its file is written
                    future = self.ledger.after_ack(future, info, chunk * prog.chunk_rows, work)
                failpoints.hit("chunk.submitted")
                self.inflight.append(_InFlight(info, prog, chunk, future, work))
                self._drain(s.chunks_in_flight - 1)
                if self.error is not None or self.stop.is_set():
                    break
        finally:
            self.sink.close_file()

    def _count_done(self, prog: FileProgress, chunk: int, lines: list[Any]) -> None:
        rejected = prog.chunk_rejects.get(chunk, 0)
        deferred = prog.deferred[chunk][1] if chunk in prog.deferred else 0
        sent, outside = done_counts(lines, self.s.window_ms, rejected, deferred)
        self.counts.lines_read += len(lines)
        self.counts.add_earlier(sent=sent, rejected=rejected, outside=outside, deferred=deferred)
        self._progress(sent + rejected + outside + deferred)

    def _drain(self, block_until: int) -> None:
        drain(self.inflight, block_until, self._finish)

    def _finish(self, item: _InFlight) -> None:
        exc = item.future.exception()
        if exc is not None:
            if self.error is None:
                self.error = exc
            log.error("%s chunk %d not delivered: %s", item.info.url, item.chunk, exc)
            return
        failpoints.hit("chunk.acknowledged")
        work, prog, c = item.work, item.prog, self.counts
        delivery = delivery_of(item.future.result())
        entries = list(work.rejects)
        for position, reason in delivery.refused:
            line, index, tid = work.where[position]
            entry = reject_entry(item.info.url, line, None, f"refused: {reason}")
            entries.append({**entry, "action": index, "transaction_id": tid})
        assert self.rejects is not None
        self.rejects.write(entries)
        refused = len(delivery.refused)
        sent = delivery.delivered
        self.counted.setdefault(item.info.url, set()).add(item.chunk)
        if work.settles:
            prog.settle_deferred(item.chunk, sent=sent, rejected=refused)
            c.add_earlier(
                sent=work.earlier_sent,
                rejected=work.earlier_rejected,
                outside=work.earlier_outside,
                deferred=0,
            )
            self._progress(work.earlier_sent + work.earlier_rejected + work.earlier_outside)
        else:
            assert self.plan is not None
            deferred = (self.plan.cutoff_us, work.too_old) if work.too_old else None
            prog.mark_done(
                item.chunk,
                sent=sent,
                rejected=work.rejected + refused,
                outside=work.outside,
                deferred=deferred,
            )
        rejected = refused + (0 if work.settles else work.rejected)
        n = sent + rejected + work.outside + work.too_old
        c.actions_read += n
        c.actions_sent += sent
        c.actions_rejected += rejected
        c.actions_outside_window += work.outside
        c.actions_too_old += work.too_old
        c.lines_rejected += work.lines_rejected
        c.lines_outside_window += work.lines_outside
        c.chunks_committed += 1
        self._commit()
        self._progress(n)
        # done for this run once complete, unless it still sends deferred chunks of it
        if prog.complete and not (self.s.allow_older_than_30_days and prog.deferred):
            self._settle(item.info, prog)

    def _commit(self) -> None:
        if self.store is not None and self.plan is not None:
            self.store.commit(self.plan.state)

    def _settle(self, info: ObjectInfo, prog: FileProgress) -> None:
        """`info` is done for this run: delete it (--delete-after) if nothing of it is left."""
        if info.url in self.settled:
            return
        self.settled.add(info.url)
        if not self.s.delete_after or self.s.mode != "send":
            return
        why = keep_reason(prog)
        if why:
            self.kept[info.url] = why
            return
        assert self.s3 is not None
        delete_object(self.s3.client, info, self.s3.shown_endpoint)
        self.deleted.append(info.url)
        log.info("%s: every action delivered; deleted (--delete-after)", info.url)

    def _progress(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.rows_done(n)

    # ------------------------------------------------------------------ finish
    def finish(self, error: BaseException | None) -> RedriveSummary:
        s = self.s
        summary = RedriveSummary(job=self.job, mode=s.mode, location=self.loc.url)
        stats: dict[str, Any] = {}
        try:
            if self.sink is not None:
                stats = self.sink.stats()
                self.sink.close()
        finally:
            if self.rejects is not None:
                self.rejects.close()
            self._stack.close()
        plan = self.plan
        summary.absorb(self.counts, plan.report if plan else Report(), stats)
        if plan is not None:
            summary.objects_total = len(plan.objects)
            summary.objects_complete = sum(
                1
                for o in plan.objects
                if o.url in plan.state.files and plan.state.files[o.url].complete
            )
            summary.warnings = list(plan.warnings)
            if s.delete_after:
                for o in plan.objects:
                    if o.url not in self.settled:
                        self.kept[o.url] = "not every action of it was delivered by this run"
        summary.objects_deleted = len(self.deleted)
        summary.objects_kept = dict(sorted(self.kept.items()))
        summary.duration_s = round(time.monotonic() - self.started, 3)
        summary.checkpoint = s.checkpoint if s.mode == "send" else None
        path = self.rejects.path if self.rejects is not None else None
        summary.rejects_path = str(path) if path is not None else None
        summary.out_dir = str(s.out) if s.out else None
        if error is not None:
            summary.status = "failed"
            summary.error = str(error) if isinstance(error, BackfillError) else repr(error)
            summary.error_type = type(error).__name__
        elif plan is not None and not plan.objects:
            summary.status = "nothing_to_do"
        elif self.counts.actions_rejected or rejects_held(path):
            summary.status = "complete_with_rejects"
        else:
            summary.status = "complete"
        if s.summary_json is not None:
            write_json_atomic(s.summary_json, summary.to_dict())
        return summary


def run_redrive(
    settings: RedriveSettings,
    *,
    progress: Sequence[ProgressListener] = (),
    stop: threading.Event | None = None,
    now: dt.datetime | None = None,
) -> RedriveOutcome:
    """Prepare, send, finish. Errors are returned in the outcome (KeyboardInterrupt and
    SystemExit raised after the summary was written)."""
    listener = progress[0] if len(progress) == 1 else None
    error: BaseException | None = None
    redrive: Redrive | None = None
    try:
        redrive = Redrive(settings, listener, stop, now)
        plan = redrive.prepare()
        if plan.objects:
            send_with_retries(redrive)
    except Exception as exc:
        error = exc
    except BaseException as exc:
        if redrive is not None:
            redrive.finish(exc)
        raise
    if redrive is None:
        assert error is not None
        return RedriveOutcome(RedriveSummary(job=settings.job or "", mode=settings.mode), error)
    return RedriveOutcome(redrive.finish(error), error)


__all__ = ["Redrive", "RedriveOutcome", "run_redrive"]
