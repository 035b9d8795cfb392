"""One shard through the pipeline: what a runner (a thread of this process, or a Dask worker)
runs for each shard, and what it gives back.

A shard's progress is its own checkpoint job, ``<job>.shard-<sid>`` (pipeline/shards.py),
written only under that job's lock; its state holds one file, so a chunk commit rewrites a
small object whatever the number of files. The result (`ShardResult`) is a return value; when
the shard fails, the error carries what it did so far as ``shard_result``, so that the driver
adds it up and a retry counts each row once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.checkpoint import CheckpointStore, JobState
from connectors.s3_store import S3Store
from moesif_backfill.errors import CheckpointMismatchError, JobLockedError
from pipeline.engine import Counts, FileRunner, ProgressListener
from pipeline.ledger import ShardLedger, open_ledger
from pipeline.plan import FilePlan, Plan
from pipeline.rejects import PRIVATE_FILE_MODE, RejectsWriter
from pipeline.resources import checkpoint_store, make_sink, open_aws, s3_store
from pipeline.settings import RunSettings
from pipeline.shards import Shard, ShardTotals
from pipeline.sinks import Sink
from transforms.mapping import MappingSpec

LOCAL_LOCK_WAIT_S = 30.0  # a local shard lock is freed when its holder dies: only wait a little


@dataclass(frozen=True)
class ShardWork:
    """Everything a worker needs to run one shard (picklable)."""

    settings: RunSettings  # paths absolute; on Dask, send limits divided among worker threads
    spec: MappingSpec
    job: str
    fingerprint: str
    file: FilePlan  # the file's plan, reading only the shard's row groups
    shard: Shard
    rejects: Path | None
    counted: frozenset[int] = frozenset()  # chunks earlier attempts of this run counted
    run_id: str = ""  # the run's UUID (the ID ledger's run_id)
    too_old_before_us: int | None = None  # Plan.too_old_before_us (the run's cutoff)


@dataclass
class ShardResult:
    """What one attempt at a shard did (picklable): its counts, its sink's statistics (empty
    when it used the run's sink), its checkpoint's totals, and every chunk counted so far."""

    sid: str
    counts: Counts
    stats: dict[str, Any]
    totals: ShardTotals
    counted: frozenset[int] = frozenset()
    progress_reported: bool = False  # rows were reported to the run's progress as they went
    extra: dict[str, Any] = field(default_factory=dict)


class ShardRejectsWriter(RejectsWriter):
    """Rejects of one shard: rows numbered from the start of the file, appended to the run's
    rejects file under an exclusive flock, so that lines of shards running at the same time in
    other processes (or threads) on this machine never interleave."""

    def __init__(self, path: Path | None, first_row: int) -> None:
        super().__init__(path)
        self.first_row = first_row

    def rows(
        self,
        source: str,
        start_row: int,
        batch: pa.RecordBatch,
        positions: Any,
        reasons: list[str],
    ) -> list[dict[str, Any]]:
        return super().rows(source, self.first_row + start_row, batch, positions, reasons)

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            super().write(entries)
        finally:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def _shard_lock(store: CheckpointStore | None, job: str, wait_s: float) -> Iterator[None]:
    """The shard's lock; a lock still held by a dead worker (an S3 lease until it expires) is
    waited for, up to `wait_s`. No store (dry-run, validate): no lock."""
    if store is None:
        yield
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with store.lock(job):
                yield
            return
        except JobLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def _shard_state(store: CheckpointStore | None, work: ShardWork, job: str) -> JobState:
    state = store.load(job) if store is not None else None
    if state is None:
        return JobState.new(job, work.fingerprint)
    prog = state.files.get(work.file.src.key)
    if state.mapping_fingerprint != work.fingerprint or (
        prog is not None and prog.identity != work.file.src.identity()
    ):
        raise CheckpointMismatchError(
            f"the checkpoint of shard {work.shard.describe()} ({store and store.describe()}/"
            f"{job}) was written for another mapping or another version of the file; rerun "
            "with --reset (or --reprocess FILE) to send it again"
        )
    return state


def run_shard(
    work: ShardWork,
    *,
    store: CheckpointStore | None,
    session: Any = None,
    sink: Sink | None = None,
    progress: ProgressListener | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    plan_files: list[FilePlan] | None = None,
    s3: S3Store | None = None,
) -> ShardResult:
    """Run one shard; its result. `sink`: the run's own (shared by the shards of a run in this
    process, left open), else one is made for the shard and closed. `plan_files`: every file
    of the run (this process: the next file is prefetched, dry-run output named by position).
    `store` None: nothing is checkpointed (dry-run, validate). `s3`: the S3 access of s3://
    sources."""
    s = work.settings
    job = work.shard.job(work.job) if store is not None else work.job
    counted = set(work.counted)
    wait_s = s.lease_seconds + 10 if s.checkpoint_is_s3 else LOCAL_LOCK_WAIT_S
    with _shard_lock(store, job, wait_s):
        files, index = [work.file], 0
        if plan_files is not None:
            index = work.shard.file_index
            files = [*plan_files[:index], work.file, *plan_files[index + 1 :]]
        state = _shard_state(store, work, job)
        plan = Plan(settings=s, spec=work.spec, job=job, files=files, state=state, s3=s3)
        plan.too_old_before_us = work.too_old_before_us
        own = sink is None
        used = make_sink(s, session, check_stream=False) if sink is None else sink
        rejects = ShardRejectsWriter(work.rejects, work.shard.first_row)
        ledger = _ledger(work, session, s3)
        runner = FileRunner(
            plan,
            work.file,
            index=index,
            sink=used,
            store=store,
            rejects=rejects,
            progress=progress,
            should_stop=should_stop,
            counted_this_run=counted,
            ledger=ledger,
        )
        try:
            runner.run()
        except BaseException as exc:
            stats = _close(used if own else None, rejects)
            # The driver adds up what this shard did even when it failed.
            exc.shard_result = _result(work, runner, stats, counted, progress)  # type: ignore[attr-defined]
            raise
        finally:
            if ledger is not None:
                ledger.close()
        stats = _close(used if own else None, rejects)
    return _result(work, runner, stats, counted, progress)


def _ledger(work: ShardWork, session: Any, s3: S3Store | None) -> ShardLedger | None:
    """The shard's ID ledger (RunSettings.ledger; none in validate mode)."""
    s = work.settings
    if s.ledger is None or s.mode == "validate":
        return None
    return ShardLedger(
        open_ledger(s, session, s3),
        job=work.job,
        run_id=work.run_id,
        source=work.file.src.path,
        first_row=work.shard.first_row,
        spec=work.spec,
        dry_run=s.mode == "dry-run",
    )


def run_remote(work: ShardWork) -> ShardResult:
    """A shard on a Dask worker: its own AWS session, S3 access, checkpoint store and sink."""
    session = open_aws(work.settings)
    store = checkpoint_store(work.settings, session)
    with contextlib.closing(s3_store(work.settings, session)) as s3:
        return run_shard(work, store=store, session=session, s3=s3)


def _close(sink: Sink | None, rejects: RejectsWriter) -> dict[str, Any]:
    try:
        if sink is None:
            return {}
        sink.close()
        return sink.stats()
    finally:
        rejects.close()


def _result(
    work: ShardWork,
    runner: FileRunner,
    stats: dict[str, Any],
    counted: set[int],
    progress: ProgressListener | None,
) -> ShardResult:
    return ShardResult(
        sid=work.shard.sid,
        counts=runner.counts,
        stats=stats,
        totals=ShardTotals.of(runner.prog),
        counted=frozenset(counted),
        progress_reported=progress is not None,
    )


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sink statistics added up: integers summed, nested dicts merged, other values from `b`
    when `a` lacks them."""
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(mine, int):
            out[key] = mine + value
        elif isinstance(value, dict) and isinstance(mine, dict):
            out[key] = merge_stats(mine, value)
        elif key not in out:
            out[key] = value
    return out


__all__ = [
    "ShardRejectsWriter",
    "ShardResult",
    "ShardWork",
    "merge_stats",
    "run_remote",
    "run_shard",
]
