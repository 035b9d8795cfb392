"""The CLI's commands under Ctrl-C/SIGTERM handling (moesif_backfill/signals.py): the work runs
on a worker thread that observes the stop event; on the way out the progress bar is stopped and
the Prefect flow run, if any, is set Cancelled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from moesif_backfill.cli_output import Follow
from moesif_backfill.signals import Interrupts

T = TypeVar("T")


class StoppableFollow(Follow):
    """The CLI's listener, also carrying the stop event the run observes (`stop`; the flows
    pass it to the core) and set to the flow run as soon as it starts (`flow_run`)."""

    __slots__ = ("stop",)

    def __init__(self, bar: Any = None, stop: Any = None) -> None:
        super().__init__(bar)
        self.stop = stop


def _cancel(follow: Follow) -> None:
    ref = follow.flow_run
    if ref is not None:
        from flows.cancel import cancel_flow_run  # noqa: PLC0415 - Prefect mode only

        cancel_flow_run(str(ref.id))


def run_interruptible(follow: StoppableFollow, work: Callable[[], T], message: str) -> T:
    """`work()` with the CLI's signal handlers installed; after Ctrl-C/SIGTERM the process
    leaves from here (exit 130/143, one line `message`) and this never returns."""
    with Interrupts(message) as interrupts:
        follow.stop = interrupts.stop
        if follow.bar is not None:
            interrupts.cleanups.append(follow.bar.stop)
        interrupts.cleanups.append(lambda: _cancel(follow))
        return interrupts.run(work)


__all__ = ["StoppableFollow", "run_interruptible"]
