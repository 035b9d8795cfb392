"""`redrive`'s passes over the objects, retried after transient delivery errors within the
run's retry budget (SendSettings.retry_budget_s, as `run` retries its shards: backoff from 1 s,
doubling, at most 30 s; it starts over after progress). Each pass commits only acknowledged
chunks and skips what this run already counted, so a chunk is counted once per run."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from moesif_backfill.errors import RunInterruptedError
from pipeline.redrive_report import RedriveCounts
from pipeline.scheduler import RetryBudget, retryable

log = logging.getLogger(__name__)


class Passes(Protocol):
    """What the retry loop drives (pipeline/redrive.py `Redrive`)."""

    error: BaseException | None
    stop: threading.Event
    counts: RedriveCounts

    @property
    def retry_budget_s(self) -> float: ...

    def send_pass(self) -> None: ...
    def unfinished(self) -> bool: ...


def send_with_retries(r: Passes) -> None:
    """Send every object; raise the error that ended the run (budget spent, a permanent
    error), or RunInterruptedError when stopped before the end."""
    budget = RetryBudget(r.retry_budget_s)
    committed = r.counts.chunks_committed
    while True:
        r.send_pass()
        error = r.error
        if error is None or r.stop.is_set():
            break
        if not retryable(error):
            raise error
        if r.counts.chunks_committed > committed:
            budget.progressed("redrive")
            committed = r.counts.chunks_committed
        delay = budget.take("redrive")
        if delay is None:
            raise error
        log.warning("delivery failed (%s); retrying in %.1f s", error, delay)
        r.error = None
        if r.stop.wait(delay):
            break
    if r.error is not None and not r.stop.is_set():
        raise r.error
    if r.stop.is_set() and r.unfinished():
        raise RunInterruptedError(
            "interrupted: the checkpoint holds every acknowledged chunk; rerun to resume"
        )


__all__ = ["send_with_retries"]
