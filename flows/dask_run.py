"""A backfill's shards as Prefect tasks on a Dask cluster (prefect-dask): --workers, --dask-address.

The driver (this process) runs the preflight once, with every file (schema drift is unified
across all of them), cuts the files into shards (flows/shards.py), records the layout in the
job's checkpoint, and submits one `process-shard` task per shard that is not yet complete to a
`prefect_dask.DaskTaskRunner`: a local cluster of N worker processes (one thread each) or an
existing scheduler. It keeps about two shards per worker thread submitted, adds each result to
the run's counts, progress artifact and layout as it arrives, and after a failure submits no new
shard, lets the running ones finish, and raises the first error. The summary adds the shards up
exactly as a run in one process adds up its files.

A task carries only picklable data (`ShardWork`: settings, mapping, the file's plan, the
shard); the worker builds what it needs: the S3 settings and AWS session once per process, and
per shard its checkpoint store, its Firehose sink (`Run._make_sink`, so several streams and the
adaptive rate work as in one process, with the --max-*-per-second limits divided by the number
of worker threads) and a rejects writer that appends to the run's one rejects file under an
exclusive lock. A shard's checkpoint (``<job>.shard-<sid>``) is written only under that shard's
lock, so a worker killed mid-shard costs only that shard's chunks in flight: Dask runs the task
again on another worker (or the next run does), and it resumes from the shard's checkpoint.

Prefect: each worker process runs the task engine and talks to the driver's Prefect API (the
driver's settings travel with every task). Without PREFECT_API_URL, --workers N points its
workers at the temporary server this process started; --dask-address needs a real Prefect
server the workers can reach (ConfigError otherwise). See docs/dask.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import distributed
import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask.task_runners import DaskTaskRunner

import moesif_backfill
from connectors import storage
from connectors.checkpoint import CheckpointStore, JobState
from flows.backfill import _Progress, _retry_transient, preflight, publish_summary
from flows.engine import Counts, FileRunner
from flows.plan import FilePlan, Plan
from flows.rejects import PRIVATE_FILE_MODE, RejectsWriter
from flows.run import Run, aws_session, checkpoint_store
from flows.settings import RunSettings
from flows.shards import Shard, ShardLayout, ShardTotals, plan_shards, save_layout
from flows.sinks import Sink
from moesif_backfill.errors import CheckpointMismatchError, ConfigError, JobLockedError
from transforms.actions import ActionBatch
from transforms.mapping import MappingSpec

log = logging.getLogger(__name__)

SHARDS_PER_THREAD = 2  # submitted at once per worker thread: the next one is always queued
LAYOUT_SAVE_EVERY_S = 10.0
WORKER_WAIT_S = 60.0
LOCAL_LOCK_WAIT_S = 30.0  # a local shard lock is freed when its holder dies: only wait a little
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ------------------------------------------------------------------------------------------
# settings


def check_cluster_settings(settings: RunSettings) -> None:
    """What can be refused before a cluster or a Prefect API is started."""
    if settings.mode != "send":
        raise ConfigError(
            "--workers/--dask-address apply to sending (--stream); --dry-run and validate run "
            "in one process: leave them out"
        )
    if settings.dask_address and not PREFECT_API_URL.value():
        raise ConfigError(
            "--dask-address needs a Prefect server that every Dask worker can reach (the "
            "temporary one a run starts without PREFECT_API_URL listens on 127.0.0.1 of this "
            "machine only): run `prefect server start --host 0.0.0.0` somewhere (or use Prefect "
            "Cloud) and export PREFECT_API_URL=http://HOST:4200/api before this command; the "
            "workers get the URL from this run. --workers N (a cluster on this machine) works "
            "without one."
        )


def task_runner(settings: RunSettings) -> DaskTaskRunner:
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            # The scheduler's HTTP endpoint on a free port (8787 may be taken), no dashboard.
            "dashboard_address": ":0",
            "scheduler_kwargs": {"dashboard": False},
        }
    )


def run_on_dask(settings: RunSettings) -> dict[str, Any]:
    """Run `settings` on the Dask cluster it names (a subflow with a DaskTaskRunner)."""
    check_cluster_settings(settings)
    runner: Any = task_runner(settings)
    return backfill_on_dask.with_options(task_runner=runner)(settings)


# ------------------------------------------------------------------------------------------
# worker side


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
    committed: set[int] = field(default_factory=set)


_attempts: dict[str, _Attempts] = {}
_process_lock = threading.Lock()
_process_s3: dict[str, Any] = {}


def _worker_session(settings: RunSettings) -> Any:
    """The AWS session (a Prefect block's, or None) and S3 settings, once per worker process."""
    key = (settings.aws_credentials_block, settings.s3_endpoint_url, settings.region)
    with _process_lock:
        if _process_s3.get("key") != key:
            session = aws_session(settings.aws_credentials_block)
            storage.configure_s3(
                endpoint_url=settings.s3_endpoint_url, region=settings.region, session=session
            )
            _process_s3.update(key=key, session=session)
        return _process_s3["session"]


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
    session = _worker_session(s)
    store = checkpoint_store(s, session)
    job = work.shard.job(work.job)
    memo = _attempts.setdefault(attempt_key, _Attempts()) if attempt_key else _Attempts()
    wait_s = s.lease_seconds + 10 if s.checkpoint_is_s3 else LOCAL_LOCK_WAIT_S
    with _shard_lock(store, job, wait_s):
        plan = Plan(
            settings=s, spec=work.spec, job=job, files=[work.file], state=_shard_state(store, work)
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
            committed_this_run=memo.committed,
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
    c, prog = memo.counts, runner.prog
    return {
        "sid": work.shard.sid,
        "counts": {**c.totals(), "min_time_us": c.min_time_us, "sample": list(c.sample)},
        "stats": memo.stats,
        "totals": ShardTotals(
            rows_sent=prog.rows_sent,
            rows_rejected=prog.rows_rejected,
            rows_outside_window=prog.rows_outside_window,
            complete=prog.complete,
        ).model_dump(),
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


@task(
    name="process-shard",
    task_run_name="shard-{index}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient,
)
def process_shard(work: ShardWork, index: int) -> dict[str, Any]:
    ctx = TaskRunContext.get()
    return run_shard(work, str(ctx.task_run.id) if ctx is not None else None)


def worker_facts(checkpoint_dir: str | None) -> dict[str, Any]:
    """Run on every worker before the shards: its version, host, and whether it sees the
    (local) checkpoint directory."""
    return {
        "version": moesif_backfill.__version__,
        "host": socket.gethostname(),
        "sees_checkpoint": checkpoint_dir is None or os.path.isdir(checkpoint_dir),
    }


# ------------------------------------------------------------------------------------------
# driver side


class _ShardStats:
    """The driver's sink (checked in preflight, never sent to) whose statistics are those the
    shards reported."""

    def __init__(self, inner: Sink, sent: Counts) -> None:
        self.inner = inner
        self.sent = sent
        self.shards: dict[str, Any] = {}

    def add(self, stats: dict[str, Any]) -> None:
        self.shards = merge_stats(self.shards, stats)

    def stats(self) -> dict[str, Any]:
        # The driver's own counters are zeros: adding the shards' gives theirs; its other
        # values (the run's send limits) stay, the shards' (their shares of them) do not.
        out = merge_stats(self.inner.stats(), self.shards)
        quota = getattr(self.inner, "quota", None)
        report = getattr(quota, "report", None)
        if callable(report):  # expected duration for the whole run's records and bytes
            out.update(report(self.sent.actions_sent, int(out.get("bytes_sent", 0))))
        return out

    def open_file(self, index: int, name: str) -> None:
        return None

    def submit(self, records: pa.Array) -> Any:
        raise RuntimeError("the driver of a Dask run sends nothing itself")

    def close_file(self) -> None:
        return None

    def close(self) -> None:
        self.inner.close()


class ShardedRun(Run):
    """A `Run` whose files are cut into shards that run on a Dask cluster."""

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.layout = ShardLayout()
        self.shards: list[Shard] = []
        self.shard_stats: _ShardStats | None = None

    def plan_shards(self) -> list[Shard]:
        assert self.plan is not None and self.store is not None and self.sink is not None
        self.shards, self.layout = plan_shards(self.plan, self.store)
        self.shard_stats = _ShardStats(self.sink, self.counts)
        self.sink = self.shard_stats
        log.info(
            "job %s: %d shard(s) of %d file(s)",
            self.plan.job,
            len(self.shards),
            len(self.plan.files),
        )
        return self.shards

    # -------------------------------------------------------------- scheduling
    def schedule(self, connect: Callable[[], distributed.Client]) -> None:
        """Run the shards not yet complete on the cluster `connect` gives (not started when
        every shard is complete)."""
        pending: collections.deque[Shard] = collections.deque()
        for shard in self.shards:
            done = self.layout.shards.get(shard.sid)
            if done is not None and done.complete:
                self._skip(done)
            else:
                pending.append(shard)
        if not pending:
            return
        client = connect()
        _wait_for_workers(client, self.settings)
        self._check_workers(client)
        try:
            with _api_for_workers():
                error = self._run_all(client, pending)
        finally:
            self._save_layout()
        if error is not None:
            raise error

    def _run_all(
        self, client: distributed.Client, pending: collections.deque[Shard]
    ) -> BaseException | None:
        """Keep SHARDS_PER_THREAD shards per worker thread submitted until all ran; after a
        failure submit no more and let the running ones finish. Returns the first error."""
        inflight: dict[Any, tuple[PrefectFuture[Any], Shard]] = {}  # by distributed.Future
        first_error: BaseException | None = None
        saved = time.monotonic()
        while pending or inflight:
            threads = max(_threads(client), 1)
            while pending and first_error is None and len(inflight) < SHARDS_PER_THREAD * threads:
                shard = pending.popleft()
                future = process_shard.submit(self._work(shard, threads), shard.index)
                inflight[getattr(future, "wrapped_future")] = (future, shard)  # noqa: B009
            if not inflight:
                break
            for dask_future in _first_done(client, list(inflight)):
                future, shard = inflight.pop(dask_future)
                error = self._collect(future, shard)
                first_error = first_error or error
            if time.monotonic() - saved >= LAYOUT_SAVE_EVERY_S:
                self._save_layout()
                saved = time.monotonic()
        return first_error

    def _work(self, shard: Shard, threads: int) -> ShardWork:
        assert self.plan is not None
        s = self.settings
        n = max(threads, 1)
        update: dict[str, Any] = {
            "max_records_per_second": s.max_records_per_second / n
            if s.max_records_per_second
            else None,
            "max_mib_per_second": s.max_mib_per_second / n if s.max_mib_per_second else None,
        }
        if not s.checkpoint_is_s3:
            update["checkpoint"] = os.path.abspath(s.checkpoint)
        fp = self.plan.files[shard.file_index]
        rejects = self._rejects_path(self.plan)
        return ShardWork(
            settings=s.model_copy(update=update),
            spec=self.plan.spec,
            job=self.plan.job,
            fingerprint=self.plan.state.mapping_fingerprint,
            file=dataclasses.replace(fp, row_groups=shard.row_groups, rows_estimate=shard.rows),
            shard=shard,
            rejects=rejects.absolute() if rejects is not None else None,
        )

    def _collect(self, future: PrefectFuture[Any], shard: Shard) -> BaseException | None:
        """Add a finished shard's result; the error it failed with, if it did."""
        error: BaseException | None = None
        try:
            result = future.result()
        except BaseException as exc:  # a task's error, or Dask's (KilledWorker, cancelled)
            error = exc
            result = getattr(exc, "shard_result", None)
            log.error("shard %d (%s) failed: %s", shard.index, shard.describe(), exc)
        if isinstance(result, dict):
            self._absorb(shard, result)
        else:
            self._reload(shard)
        return error

    def _absorb(self, shard: Shard, result: dict[str, Any]) -> None:
        c = Counts()
        data = result["counts"]
        for name in Counts.TOTALS:
            setattr(c, name, int(data.get(name, 0)))
        c.min_time_us = data.get("min_time_us")
        c.sample = list(data.get("sample", []))
        self.counts.add(c)
        if self.shard_stats is not None:
            self.shard_stats.add(result.get("stats", {}))
        self.layout.shards[shard.sid] = ShardTotals.model_validate(result["totals"])
        if self.progress is not None:
            self.progress.rows_done(c.rows_read)

    def _skip(self, done: ShardTotals) -> None:
        """A shard an earlier run completed: counted as skipped, as a complete file is."""
        n = done.rows_sent + done.rows_rejected
        self.counts.rows_read += n + done.rows_outside_window
        self.counts.rows_skipped += n
        self.counts.rows_outside_window += done.rows_outside_window
        if self.progress is not None:
            self.progress.rows_done(done.rows_done)

    def _reload(self, shard: Shard) -> None:
        """The totals of a shard whose task returned nothing, from its checkpoint."""
        assert self.store is not None and self.plan is not None
        try:
            state = self.store.load(shard.job(self.plan.job))
        except Exception as exc:  # the run already failed; keep the last known totals
            log.warning("shard %d: could not read its checkpoint: %s", shard.index, exc)
            return
        prog = state.files.get(shard.key) if state is not None else None
        if prog is not None:
            self.layout.shards[shard.sid] = ShardTotals(
                rows_sent=prog.rows_sent,
                rows_rejected=prog.rows_rejected,
                rows_outside_window=prog.rows_outside_window,
                complete=prog.complete,
            )

    def _save_layout(self) -> None:
        if self.store is not None and self.plan is not None:
            save_layout(self.store, self.plan.job, self.layout)

    def _check_workers(self, client: distributed.Client) -> None:
        s = self.settings
        assert self.plan is not None
        directory = None if s.checkpoint_is_s3 else os.path.abspath(s.checkpoint)
        job_dir = None if directory is None else os.path.join(directory, self.plan.job)
        try:
            facts: dict[str, dict[str, Any]] = client.run(worker_facts, job_dir)
        except Exception as exc:
            raise ConfigError(
                f"a Dask worker cannot run moesif-backfill's tasks ({type(exc).__name__}: {exc}); "
                "install the same moesif-backfill version on every worker"
            ) from None
        for address, fact in facts.items():
            if fact["version"] != moesif_backfill.__version__:
                raise ConfigError(
                    f"Dask worker {address} runs moesif-backfill {fact['version']}, this is "
                    f"{moesif_backfill.__version__}: install the same version on every worker"
                )
            if not fact["sees_checkpoint"]:
                raise ConfigError(
                    f"Dask worker {address} ({fact['host']}) does not see the checkpoint "
                    f"directory {job_dir}: every worker writes its shards' checkpoints there. "
                    "Use an s3:// checkpoint, or a directory shared by all machines at the same "
                    "path."
                )
        api = PREFECT_API_URL.value()
        remote = [a for a in facts if _host(a) not in _LOOPBACK]
        if api and _host(str(api)) in _LOOPBACK and remote:
            raise ConfigError(
                f"PREFECT_API_URL is {api}, which Dask worker {remote[0]} on another machine "
                "cannot reach: give the Prefect server's address on the network"
            )

    # -------------------------------------------------------------- job view
    def job_totals(self) -> dict[str, int]:
        totals = self.layout.shards.values()
        complete = 0
        for key in self.layout.files:
            sids = [s.sid for s in self.layout.shards_of(key)]
            if all(sid in self.layout.shards and self.layout.shards[sid].complete for sid in sids):
                complete += 1
        return {
            "rows_sent": sum(t.rows_sent for t in totals),
            "rows_rejected": sum(t.rows_rejected for t in totals),
            "files_complete": complete,
        }

    def count_complete_files(self) -> None:
        assert self.plan is not None
        by_file: dict[int, list[Shard]] = collections.defaultdict(list)
        for shard in self.shards:
            by_file[shard.file_index].append(shard)
        self.files_complete = sum(
            1
            for shards in by_file.values()
            if all((t := self.layout.shards.get(s.sid)) is not None and t.complete for s in shards)
        )


def _host(address: str) -> str:
    return urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""


def _threads(client: distributed.Client) -> int:
    return int(sum(client.nthreads().values()))  # type: ignore[no-untyped-call]


def _first_done(client: distributed.Client, futures: list[Any]) -> list[Any]:
    """The finished ones of `futures` (distributed.Future), once at least one is."""
    with client.as_current():
        done, _ = distributed.wait(futures, return_when="FIRST_COMPLETED")  # type: ignore[no-untyped-call]
    return list(done)


def _wait_for_workers(client: distributed.Client, settings: RunSettings) -> int:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        raise ConfigError(
            f"no Dask worker joined the scheduler at {settings.dask_address or 'the local cluster'}"
            f" within {WORKER_WAIT_S:.0f} s: start `dask worker <scheduler address>` on each "
            "machine (with moesif-backfill installed), then rerun"
        ) from None
    return _threads(client)


@contextlib.contextmanager
def _api_for_workers() -> Iterator[None]:
    """Without PREFECT_API_URL this process runs a temporary Prefect server; the tasks (which
    carry this process's settings) are pointed at it, instead of each worker process starting
    its own. Only a local cluster can reach it (check_cluster_settings)."""
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    url = str(get_client(sync_client=True).api_url)
    log.info("workers use this run's temporary Prefect server at %s", url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _dask_client() -> distributed.Client:
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if not isinstance(runner, DaskTaskRunner):
        raise RuntimeError("backfill_on_dask must run with a DaskTaskRunner (run_on_dask)")
    try:
        return runner.client
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {runner.address}: {exc}; check the address "
            "(tcp://HOST:8786) and that `dask scheduler` runs there"
        ) from None


@flow(name="moesif-backfill-dask", log_prints=False)
def backfill_on_dask(settings: RunSettings) -> dict[str, Any]:
    """The backfill with its shards on a Dask cluster (called by `backfill` through
    `run_on_dask`, which gives it its DaskTaskRunner)."""
    check_cluster_settings(settings)
    run = ShardedRun(settings)
    error: BaseException | None = None
    try:
        preflight(run)
        assert run.plan is not None
        run.plan_shards()
        run.progress = _Progress(run.plan.rows_estimate, run.plan.job)
        run.schedule(_dask_client)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if run.plan is not None:
            run.count_complete_files()
        summary = publish_summary(run, error)
    return summary.to_dict()


__all__ = [
    "ShardWork",
    "backfill_on_dask",
    "check_cluster_settings",
    "merge_stats",
    "run_on_dask",
    "run_shard",
]
