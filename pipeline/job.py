"""Run one backfill job, start to finish, as plain Python: the entry point of the core.

The CLI calls `run_job` directly; the Prefect flow (`flows.backfill`) calls it too and only adds
artifacts and logs. The outcome is a return value: the summary, and the error that stopped the
run (None when it finished), never a module global.

The shards run in this process (`LocalRunner`, RunSettings.shards_in_flight at once) or, with
RunSettings.workers / dask_address, on a Dask cluster (`DaskRunner`); the checkpoint layout is
the same, so a job may move between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.engine import ProgressListener
from pipeline.report import RunSummary
from pipeline.run import Run, on_dask
from pipeline.settings import RunSettings


@dataclass(frozen=True)
class JobOutcome:
    """What a run ended with: its summary, and the error that stopped it (None: it finished)."""

    summary: RunSummary
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Fanout:
    """Passes row counts (and the expected total) on to several progress listeners."""

    def __init__(self, listeners: Sequence[ProgressListener]) -> None:
        self.listeners = list(listeners)

    def set_total(self, total: int | None) -> None:
        for listener in self.listeners:
            set_total = getattr(listener, "set_total", None)
            if set_total is not None:
                set_total(total)

    def rows_done(self, n: int) -> None:
        for listener in self.listeners:
            listener.rows_done(n)


def _run_on_dask(run: Run, fanout: Fanout) -> None:
    """Reach the cluster the settings name (or start it) first, so that a wrong address fails
    before the preflight; then plan and run the shards not yet complete on it."""
    from pipeline import cluster  # noqa: PLC0415 - imports distributed
    from pipeline.runners import DaskRunner  # noqa: PLC0415

    cluster.check_cluster_settings(run.settings)
    cluster.quiet_dask_logs()
    with cluster.dask_client(run.settings) as client:
        plan = run.prepare()
        fanout.set_total(plan.rows_estimate)
        todo = run.pending()
        if not todo:
            return
        cluster.wait_for_workers(client, run.settings)
        cluster.check_workers(client, run.settings, plan.job)
        run.run_shards(DaskRunner(client, lambda: cluster.threads(client)), todo)


def _run_here(run: Run, fanout: Fanout) -> None:
    plan = run.prepare()
    fanout.set_total(plan.rows_estimate)
    runner = run.local_runner()
    try:
        run.run_shards(runner, run.pending())
    finally:
        runner.close()


def run_job(settings: RunSettings, *, progress: Sequence[ProgressListener] = ()) -> JobOutcome:
    """Plan, run every shard, finish. Errors are returned in the outcome, not raised, except
    KeyboardInterrupt/SystemExit (after the summary was written); the caller decides the exit."""
    fanout = Fanout(progress)
    run = Run(settings, progress=fanout)
    error: BaseException | None = None
    try:
        if on_dask(settings):
            _run_on_dask(run, fanout)
        else:
            _run_here(run, fanout)
    except Exception as exc:
        error = exc
    except BaseException as exc:
        run.finish(exc)
        raise
    return JobOutcome(run.finish(error), error)
