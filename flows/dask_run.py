"""A backfill's shards as Prefect tasks on a Dask cluster (prefect-dask): --workers, --dask-address.

The driver (this process) runs the preflight once, with every file (schema drift is unified
across all of them), cuts the files into shards (pipeline/shards.py), records the layout in the
job's checkpoint, and submits one `process-shard` task per shard that is not yet complete
(flows/shard_task.py) to a `prefect_dask.DaskTaskRunner` (flows/dask_cluster.py): a local
cluster of N worker processes (one thread each) or an existing scheduler. It keeps about two
shards per worker thread submitted, adds each result to the run's counts, progress artifact and
layout as it arrives, and after a failure submits no new shard, lets the running ones finish,
and raises the first error. The summary adds the shards up exactly as a run in one process adds
up its files. See docs/dask.md.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import distributed
import pyarrow as pa
from prefect import flow
from prefect.futures import PrefectFuture

from flows.backfill import _Progress, preflight, publish_summary
from flows.dask_cluster import (
    api_for_workers,
    check_cluster_settings,
    check_workers,
    dask_client,
    first_done,
    task_runner,
    wait_for_workers,
)
from flows.dask_cluster import threads as cluster_threads
from flows.shard_task import ShardWork, merge_stats, process_shard
from pipeline.engine import Counts
from pipeline.run import Run
from pipeline.settings import RunSettings
from pipeline.shards import Shard, ShardLayout, ShardTotals, plan_shards, save_layout
from pipeline.sinks import Sink

log = logging.getLogger(__name__)

SHARDS_PER_THREAD = 2  # submitted at once per worker thread: the next one is always queued
LAYOUT_SAVE_EVERY_S = 10.0


def run_on_dask(settings: RunSettings) -> dict[str, Any]:
    """Run `settings` on the Dask cluster it names (a subflow with a DaskTaskRunner)."""
    check_cluster_settings(settings)
    runner: Any = task_runner(settings)
    return backfill_on_dask.with_options(task_runner=runner)(settings)


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
        wait_for_workers(client, self.settings)
        assert self.plan is not None
        check_workers(client, self.settings, self.plan.job)
        try:
            with api_for_workers():
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
            threads = max(cluster_threads(client), 1)
            while pending and first_error is None and len(inflight) < SHARDS_PER_THREAD * threads:
                shard = pending.popleft()
                future = process_shard.submit(self._work(shard, threads), shard.index)
                inflight[getattr(future, "wrapped_future")] = (future, shard)  # noqa: B009
            if not inflight:
                break
            for dask_future in first_done(client, list(inflight)):
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
        c.sent_without_field = dict(data.get("sent_without_field", {}))
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
            self.layout.shards[shard.sid] = ShardTotals.of(prog)

    def _save_layout(self) -> None:
        if self.store is not None and self.plan is not None:
            save_layout(self.store, self.plan.job, self.layout)

    # -------------------------------------------------------------- job view
    def job_totals(self) -> dict[str, int]:
        totals = self.layout.shards.values()
        return {
            "rows_sent": sum(t.rows_sent for t in totals),
            "rows_rejected": sum(t.rows_rejected for t in totals),
            "files_complete": sum(
                self.layout.all_complete(self.layout.shards_of(key)) for key in self.layout.files
            ),
        }

    def count_complete_files(self) -> None:
        assert self.plan is not None
        by_file: dict[int, list[Shard]] = collections.defaultdict(list)
        for shard in self.shards:
            by_file[shard.file_index].append(shard)
        self.files_complete = sum(self.layout.all_complete(s) for s in by_file.values())


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
        run.schedule(dask_client)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if run.plan is not None:
            run.count_complete_files()
        summary = publish_summary(run, error)
    return summary.to_dict()


__all__ = ["ShardedRun", "backfill_on_dask", "run_on_dask"]
