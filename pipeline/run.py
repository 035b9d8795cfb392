"""One run of a job, as plain Python: prepare (preflight, lock, shards), run shards, finish.

Every run is a sharded run (pipeline/shards.py): the plan is cut into shards, each with its own
checkpoint, and the shards run on a runner (pipeline/runners.py): threads of this process
(`LocalRunner`) or a Dask cluster (`DaskRunner`). `pipeline.job.run_job` drives a whole run;
`Run.process_file` runs one file's shards here (tests, and the Prefect flow's file tasks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from connectors.checkpoint import CheckpointStore
from connectors.s3_store import S3Store
from moesif_backfill import PROCESS_T0
from moesif_backfill.errors import BackfillError, RunInterruptedError
from pipeline import shards as shard_plans
from pipeline.engine import Counts, ProgressListener
from pipeline.layout import Shard, ShardLayout, ShardTotals, save_layout
from pipeline.ledger import check_ledger
from pipeline.plan import Plan, default_job_name, make_plan, reprocess_keys
from pipeline.rejects import RejectsWriter, drop_rejects, job_rejects_path, rejects_held
from pipeline.report import RunSummary, write_json_atomic
from pipeline.resources import check_sink, checkpoint_store, make_sink, open_aws, s3_store
from pipeline.runners import LocalRunner, Runner
from pipeline.scheduler import RetryBudget, run_shards
from pipeline.settings import RunSettings
from pipeline.shard_work import ShardResult, ShardWork, merge_stats
from pipeline.sinks import Sink

log = logging.getLogger(__name__)


def on_dask(settings: RunSettings) -> bool:
    """Whether the run's shards go to a Dask cluster (pipeline/runners.py `DaskRunner`)."""
    return bool(settings.dask_address or settings.workers)


class Run:
    """Owns the resources of one run: the plan, its shards, the job lock, the sink, the
    counters and the retry budget."""

    def __init__(
        self,
        settings: RunSettings,
        progress: ProgressListener | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        # Set from outside (the CLI's Ctrl-C/SIGTERM handler): no new shard or chunk starts;
        # the chunks in flight finish and are committed if acknowledged.
        self.stop = stop if stop is not None else threading.Event()
        self.progress = progress
        self.started = time.monotonic()
        self.run_id = str(uuid.uuid4())  # the ID ledger's run_id (pipeline/ledger.py)
        self.counts = Counts()
        self.files_complete = 0
        self._stack = contextlib.ExitStack()
        self.store: CheckpointStore | None = None
        self.plan: Plan | None = None
        self.sink: Sink | None = None
        self.rejects: RejectsWriter | None = None
        self.session: Any = None  # a boto3 session from an AwsCredentials block, if given
        self.s3: S3Store | None = None  # the run's S3 access for s3:// sources
        self.shards: list[Shard] = []
        self.layout = ShardLayout()
        self.budget = RetryBudget(settings.retry_budget_s)
        self.counted: dict[str, set[int]] = {}  # by shard sid: chunks counted this run
        self.files_run: set[int] = set()  # dry-run/validate: files processed
        self.remote_stats: dict[str, Any] = {}  # statistics of sinks on Dask workers

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> Plan:
        s = self.settings
        if s.mode == "send":
            check_sink(s)  # --sink moesif: the application id, before anything is read
        self.session = open_aws(s)
        self.s3 = s3_store(s, self.session)
        self._stack.callback(self.s3.close)
        # Only a send uses the job's checkpoint; a dry-run or validate previews the input.
        self.store = store = checkpoint_store(s, self.session) if s.mode == "send" else None
        if store is not None:
            job = s.job or default_job_name(s)
            self._stack.enter_context(store.lock(job))
            if s.reset:
                store.reset(job)
                shard_plans.reset_shards(store, job)
                log.warning("job %s: checkpoint reset, starting over", job)
        plan = make_plan(s, store, s3=self.s3)
        check_ledger(s, plan.job, self.session, self.s3)  # --ledger: writable, before sending
        if store is not None:
            store.commit(plan.state)  # proves the checkpoint is writable before sending
        self.plan = plan
        self.sink = make_sink(s, self.session)
        self.rejects = RejectsWriter(self._rejects_path(plan))
        self._start_rejects(plan)
        if self.store is not None:
            self.shards, self.layout = shard_plans.plan_shards(plan, self.store)
        else:
            self.shards = shard_plans.file_shards(plan)
        log.info("job %s: %d shard(s) of %d file(s)", plan.job, len(self.shards), len(plan.files))
        return plan

    def _start_rejects(self, plan: Plan) -> None:
        """The rejects file holds the rows rejected and not sent since: a file sent again
        (--reprocess FILE; every file with --reset) loses its lines (a row fixed since is not
        listed any more, one still bad is written again); a dry-run or validate writes a new one."""
        path = self._rejects_path(plan)
        if path is None:
            return
        s = self.settings
        if s.mode != "send" or s.reset:
            drop_rejects(path, None)
        elif s.reprocess:
            drop_rejects(path, reprocess_keys(s))

    def _rejects_path(self, plan: Plan) -> Path | None:
        s = self.settings
        return job_rejects_path(s, plan.job, s.mode, s.out)

    # ------------------------------------------------------------------ process
    def local_runner(self) -> LocalRunner:
        """A runner on threads of this process (the run's sink, store and progress)."""
        assert self.plan is not None and self.sink is not None
        in_flight = self.settings.shards_in_flight if self.settings.mode == "send" else 1
        return LocalRunner(
            store=self.store,
            session=self.session,
            sink=self.sink,
            progress=self.progress,
            plan_files=self.plan.files,
            s3=self.s3,
            shards_in_flight=in_flight,
            interrupt=self.stop,
            rows_in_flight=self.settings.chunks_in_flight * self.settings.chunk_rows,
        )

    def pending(self, shards: list[Shard] | None = None) -> list[Shard]:
        """Those of `shards` (default: all) left to run; the ones an earlier run completed are
        counted as skipped (once per run)."""
        todo = []
        resend_old = self.settings.allow_older_than_30_days
        for shard in self.shards if shards is None else shards:
            done = self.layout.shards.get(shard.sid)
            # A shard whose only pending rows are too old is left as it is unless those are
            # sent now (--allow-older-than-30-days).
            if done is not None and done.complete and not (done.rows_deferred and resend_old):
                if shard.sid not in self.counted:  # not already counted by this run
                    self.counted[shard.sid] = set()
                    self._skip(done)
                continue
            todo.append(shard)
        return todo

    def run_shards(self, runner: Runner, todo: list[Shard]) -> None:
        """Run `todo` (see `pending`) on `runner`; raises the first error (after the running
        shards ended)."""
        error = None
        try:
            if todo:
                error = run_shards(self, runner, todo)
        finally:
            self.save_layout()
        if error is not None:
            raise error
        if self.stop.is_set() and todo:
            raise RunInterruptedError(
                "interrupted: the checkpoint holds every acknowledged chunk; rerun to resume"
            )

    def process_file(self, index: int) -> Counts:
        """Run the shards of file `index` here, one after the other; what they counted."""
        before = dataclasses.replace(self.counts, sample=[], sent_without_field={})
        runner = self.local_runner()
        try:
            todo = self.pending([s for s in self.shards if s.file_index == index])
            self.run_shards(runner, todo)
        finally:
            runner.close()
            self.files_run.add(index)
        counts = Counts()
        for name in Counts.TOTALS:
            setattr(counts, name, getattr(self.counts, name) - getattr(before, name))
        return counts

    # ------------------------------------------------------------ scheduler host
    def work(self, shard: Shard) -> ShardWork:
        assert self.plan is not None
        fp = self.plan.files[shard.file_index]
        return ShardWork(
            settings=self.settings,
            spec=self.plan.spec,
            job=self.plan.job,
            fingerprint=self.plan.state.mapping_fingerprint,
            file=dataclasses.replace(fp, row_groups=shard.row_groups, rows_estimate=shard.rows),
            shard=shard,
            rejects=self._rejects_path(self.plan),
            counted=frozenset(self.counted.get(shard.sid, ())),
            run_id=self.run_id,
            too_old_before_us=self.plan.too_old_before_us,
        )

    def absorb(self, shard: Shard, result: ShardResult) -> None:
        """Add what one attempt at `shard` did."""
        c = result.counts
        self.counts.add(c)
        self.counted[shard.sid] = set(result.counted)
        if result.stats:
            self.remote_stats = merge_stats(self.remote_stats, result.stats)
        self.layout.shards[shard.sid] = result.totals
        if self.progress is not None and not result.progress_reported:
            self.progress.rows_done(c.rows_read)
        log.info(
            "%s: %d rows read, %d sent, %d rejected, %d skipped",
            shard.describe(),
            c.rows_read,
            c.actions_sent,
            c.rows_rejected,
            c.rows_skipped,
        )

    def _skip(self, done: ShardTotals) -> None:
        """A shard an earlier run completed, counted as that run left it (engine.Counts)."""
        self.counts.add_earlier(
            sent=done.rows_sent,
            rejected=done.rows_rejected,
            outside=done.rows_outside_window,
            deferred=done.rows_deferred,
        )
        if self.progress is not None:
            self.progress.rows_done(done.rows_done)

    def stall_left(self) -> float:
        """Seconds before this process's sink counts as stalled (RunSettings.stall_timeout_s
        without an acknowledgement): a retry is not put off beyond it (inf: no such sink)."""
        stalled_for = getattr(self.sink, "stalled_for", None)
        if stalled_for is None:
            return float("inf")
        return float(self.settings.stall_timeout_s - stalled_for())

    def reload(self, shard: Shard) -> None:
        """The totals of a shard whose attempt returned nothing, from its checkpoint."""
        if self.store is None or self.plan is None:
            return
        try:
            state = self.store.load(shard.job(self.plan.job))
        except Exception as exc:  # the run already failed; keep the last known totals
            log.warning("shard %d: could not read its checkpoint: %s", shard.index, exc)
            return
        prog = state.files.get(shard.key) if state is not None else None
        if prog is not None:
            self.layout.shards[shard.sid] = ShardTotals.of(prog)

    def save_layout(self) -> None:
        if self.store is not None and self.plan is not None and self.layout.files:
            save_layout(self.store, self.plan.job, self.layout)

    # ------------------------------------------------------------------ finish
    def job_totals(self) -> dict[str, int]:
        """What the job's checkpoint says was delivered so far, over all its runs."""
        totals = self.layout.shards.values()
        out = {
            "rows_sent": sum(t.rows_sent for t in totals),
            "rows_rejected": sum(t.rows_rejected for t in totals),
            "files_complete": len(self.layout.complete_files()),
        }
        pending_old = sum(t.rows_deferred for t in totals)
        if pending_old:  # left pending as too old (--skip-older-than-30-days)
            out["rows_too_old"] = pending_old
        return out

    def _files_complete(self) -> int:
        if self.settings.mode != "send":
            return len(self.files_run)
        by_file: dict[int, list[Shard]] = {}
        for shard in self.shards:
            by_file.setdefault(shard.file_index, []).append(shard)
        return sum(self.layout.all_complete(s) for s in by_file.values())

    def _sink_stats(self) -> dict[str, Any]:
        assert self.sink is not None
        out = self.sink.stats()
        if not self.remote_stats:
            return out
        # The driver's own counters are zeros: adding the workers' gives theirs; its other
        # values (the run's send limits) stay, the workers' (their shares of them) do not.
        out = merge_stats(out, self.remote_stats)
        quota = getattr(self.sink, "quota", None)
        report = getattr(quota, "report", None)
        if callable(report):  # expected duration for the whole run's records and bytes
            out.update(report(self.counts.actions_sent, int(out.get("bytes_sent", 0))))
        return out

    def finish(self, error: BaseException | None = None) -> RunSummary:
        s = self.settings
        job = self.plan.job if self.plan else (s.job or default_job_name(s))
        summary = RunSummary(job=job, mode=s.mode, sink=s.sink)
        try:
            if self.sink is not None:
                self.sink.close()
        finally:
            if self.rejects is not None:
                self.rejects.close()
            self._stack.close()
        c = self.counts
        for name, value in c.totals().items():
            setattr(summary, name, value)
        if self.sink is not None:
            for k, v in self._sink_stats().items():
                setattr(summary, k, v)
        summary.sample_actions = list(c.sample)
        summary.sent_without_field = dict(sorted(c.sent_without_field.items()))
        summary.duration_s = round(time.monotonic() - self.started, 3)
        summary.startup_s = round(self.started - PROCESS_T0, 3)
        summary.rows_per_second = round(c.rows_read / summary.duration_s, 1) if c.rows_read else 0
        if self.plan is not None:
            summary.files_total = len(self.plan.files)
            summary.rows_older_than_30_days = self.plan.old_rows
            summary.warnings = list(self.plan.warnings)
            summary.job_totals = self.job_totals()
        summary.files_complete = self._files_complete() if self.plan is not None else 0
        summary.checkpoint = s.checkpoint if s.mode == "send" else None
        summary.rejects_path = (
            str(self.rejects.path) if self.rejects and self.rejects.path else None
        )
        summary.out_dir = str(s.out) if s.out else None
        if error is not None:
            summary.status = "failed"
            summary.error = str(error) if isinstance(error, BackfillError) else repr(error)
            summary.error_type = type(error).__name__
        else:
            held = self.rejects is not None and rejects_held(self.rejects.path)
            summary.status = "complete_with_rejects" if c.rows_rejected or held else "complete"
        if s.summary_json is not None:
            write_json_atomic(s.summary_json, summary.to_dict())
        return summary


__all__ = ["Run", "on_dask"]
