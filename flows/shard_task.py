"""The worker side of a run on Dask: the `process-shard` task, which runs one shard.

A task carries only picklable data (`ShardWork`: settings, mapping, the file's plan, the
shard); the worker builds what it needs: the S3 settings and AWS session once per process, and
per shard its checkpoint store, its Firehose sink (`Run._make_sink`, so several streams and the
adaptive rate work as in one process, with the --max-*-per-second limits divided by the number
of worker threads) and a rejects writer that appends to the run's one rejects file under an
exclusive lock. A shard's checkpoint (``<job>.shard-<sid>``) is written only under that shard's
lock, so a worker killed mid-shard costs only that shard's chunks in flight: Dask runs the task
again on another worker (or the next run does), and it resumes from the shard's checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from connectors.checkpoint import CheckpointStore, JobState
from connectors.s3_store import S3Store
from flows.backfill import RETRY_TRANSIENT
from moesif_backfill.errors import CheckpointMismatchError, JobLockedError
from pipeline.engine import Counts, FileRunner
from pipeline.plan import FilePlan, Plan
from pipeline.rejects import PRIVATE_FILE_MODE, RejectsWriter
from pipeline.run import Run, checkpoint_store, open_aws, s3_store
from pipeline.settings import RunSettings
from pipeline.shards import Shard, ShardTotals
from pipeline.sinks import Sink
from transforms.actions import ActionBatch
from transforms.mapping import MappingSpec

LOCAL_LOCK_WAIT_S = 30.0  # a local shard lock is freed when its holder dies: only wait a little


@dataclass(frozen=True)
class ShardWork:
    """Everything a worker needs to run one shard (picklable)."""

    settings: RunSettings  # paths absolute; send limits divided among the worker threads
    spec: MappingSpec
    job: str
    fingerprint: str
    file: FilePlan  # the file's plan, reading only the shard's row groups
    shard: Shard
    rejects: Path | None


class ShardRejectsWriter(RejectsWriter):
    """Rejects of one shard: rows numbered from the start of the file, appended to the run's
    rejects file under an exclusive flock, so that lines of shards running at the same time in
    other processes on this machine never interleave."""

    def __init__(self, path: Path | None, first_row: int) -> None:
        super().__init__(path)
        self.first_row = first_row

    def entries(
        self, source: str, start_row: int, batch: pa.RecordBatch, result: ActionBatch
    ) -> list[dict[str, Any]]:
        return super().entries(source, self.first_row + start_row, batch, result)

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


@dataclass
class _Attempts:
    """What earlier attempts of one task run did in this process (Prefect retries)."""

    counts: Counts = field(default_factory=Counts)
    stats: dict[str, Any] = field(default_factory=dict)
    counted: set[int] = field(default_factory=set)  # chunks counted (FileRunner)


_attempts: dict[str, _Attempts] = {}
_process_lock = threading.Lock()
_process_s3: dict[str, Any] = {}


def _worker_session(settings: RunSettings) -> tuple[Any, S3Store]:
    """The AWS session (a Prefect block's, or None) and the S3 access built with it, once per
    worker process (its shards reuse the client and its caches)."""
    key = (settings.aws_credentials_block, settings.s3_endpoint_url, settings.region)
    with _process_lock:
        if _process_s3.get("key") != key:
            old = _process_s3.get("s3")
            if old is not None:
                old.close()
            session = open_aws(settings)
            _process_s3.update(key=key, session=session, s3=s3_store(settings, session))
        return _process_s3["session"], _process_s3["s3"]


@contextlib.contextmanager
def _shard_lock(store: CheckpointStore, job: str, wait_s: float) -> Iterator[None]:
    """The shard's lock; a lock still held by a dead worker (an S3 lease until it expires) is
    waited for, up to `wait_s`."""
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


def _shard_state(store: CheckpointStore, work: ShardWork) -> JobState:
    job = work.shard.job(work.job)
    state = store.load(job)
    if state is None:
        return JobState.new(job, work.fingerprint)
    prog = state.files.get(work.file.src.key)
    if state.mapping_fingerprint != work.fingerprint or (
        prog is not None and prog.identity != work.file.src.identity()
    ):
        raise CheckpointMismatchError(
            f"the checkpoint of shard {work.shard.describe()} ({store.describe()}/{job}) was "
            "written for another mapping or another version of the file; rerun with --reset "
            "(or --reprocess FILE) to send it again"
        )
    return state


def run_shard(work: ShardWork, attempt_key: str | None = None) -> dict[str, Any]:
    """Run one shard through the pipeline on this worker; its result for the driver.

    `attempt_key` (the task run id) keeps what earlier attempts in this process did, so that a
    Prefect retry neither loses their counts nor counts their chunks as skipped."""
    s = work.settings
    session, s3 = _worker_session(s)
    store = checkpoint_store(s, session)
    job = work.shard.job(work.job)
    memo = _attempts.setdefault(attempt_key, _Attempts()) if attempt_key else _Attempts()
    wait_s = s.lease_seconds + 10 if s.checkpoint_is_s3 else LOCAL_LOCK_WAIT_S
    with _shard_lock(store, job, wait_s):
        plan = Plan(
            settings=s,
            spec=work.spec,
            job=job,
            files=[work.file],
            state=_shard_state(store, work),
            s3=s3,
        )
        run = Run(s)
        run.session = session
        sink = run._make_sink(plan, check_stream=False)
        rejects = ShardRejectsWriter(work.rejects, work.shard.first_row)
        runner = FileRunner(
            plan,
            work.file,
            index=0,
            sink=sink,
            store=store,
            rejects=rejects,
            counted_this_run=memo.counted,
        )
        try:
            runner.run()
        except BaseException as exc:
            _close(sink, rejects, memo, runner)
            # The driver adds up what this shard did even when it failed.
            exc.shard_result = _result(work, memo, runner)  # type: ignore[attr-defined]
            raise
        _close(sink, rejects, memo, runner)
    _attempts.pop(attempt_key or "", None)
    return _result(work, memo, runner)


def _close(sink: Sink, rejects: RejectsWriter, memo: _Attempts, runner: FileRunner) -> None:
    try:
        sink.close()
    finally:
        rejects.close()
        memo.counts.add(runner.counts)
        memo.stats = merge_stats(memo.stats, sink.stats())


def _result(work: ShardWork, memo: _Attempts, runner: FileRunner) -> dict[str, Any]:
    c = memo.counts
    return {
        "sid": work.shard.sid,
        "counts": {
            **c.totals(),
            "min_time_us": c.min_time_us,
            "sample": list(c.sample),
            "sent_without_field": dict(c.sent_without_field),
        },
        "stats": memo.stats,
        "totals": ShardTotals.of(runner.prog).model_dump(),
    }


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


@task(name="process-shard", task_run_name="shard-{index}", cache_policy=NO_CACHE, **RETRY_TRANSIENT)
def process_shard(work: ShardWork, index: int) -> dict[str, Any]:
    ctx = TaskRunContext.get()
    return run_shard(work, str(ctx.task_run.id) if ctx is not None else None)


__all__ = ["ShardRejectsWriter", "ShardWork", "merge_stats", "process_shard", "run_shard"]
