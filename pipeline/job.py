"""Run one backfill job, start to finish, as plain Python: the entry point of the core.

The CLI calls `run_job` directly; the Prefect flow (`flows.backfill`) calls it too and only adds
artifacts and logs. The outcome is a return value: the summary, and the error that stopped the
run (None when it finished), never a module global.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.engine import ProgressListener
from pipeline.report import RunSummary
from pipeline.run import Run
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


def run_job(settings: RunSettings, *, progress: Sequence[ProgressListener] = ()) -> JobOutcome:
    """Plan, process every file, finish. Errors are returned in the outcome, not raised, except
    KeyboardInterrupt/SystemExit (after the summary was written); the caller decides the exit."""
    fanout = Fanout(progress)
    run = Run(settings, progress=fanout)
    error: BaseException | None = None
    try:
        plan = run.prepare()
        fanout.set_total(plan.rows_estimate)
        for index in range(len(plan.files)):
            run.process_file(index)
    except Exception as exc:
        error = exc
    except BaseException as exc:
        run.finish(exc)
        raise
    return JobOutcome(run.finish(error), error)
