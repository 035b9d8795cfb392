"""Runs a list of shards on a runner (pipeline/runners.py) to the end, the same way in one
process and on a Dask cluster.

It keeps the runner's slots full; adds each result to the run as it arrives (also a failed
shard's, which its error carries); retries a shard that failed with TransientDeliveryError
(throttling, 5xx, dropped connections beyond the sender's own retries) from its checkpoint,
after an exponential backoff (starting over once the shard made progress), while the run's
retry budget (RunSettings.retry_budget_s: total
seconds of backoff over the whole run) lasts, passing on the chunks its earlier attempts counted
so that each row is counted once; and after any other failure (or an exhausted budget) starts
no new shard, tells the running ones to stop starting chunks (in this process), lets them
finish, and raises the first error.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from moesif_backfill.errors import DeliveryStalledError, TransientDeliveryError
from pipeline.layout import Shard
from pipeline.runners import Runner
from pipeline.shard_work import ShardResult, ShardWork

log = logging.getLogger(__name__)

RETRY_FIRST_DELAY_S = 1.0
RETRY_MAX_DELAY_S = 30.0
LAYOUT_SAVE_EVERY_S = 10.0


@dataclass
class RetryBudget:
    """Seconds of backoff the run may still spend on retries (all shards together)."""

    left: float
    attempts: dict[str, int] = field(default_factory=dict)  # retries so far, by shard sid

    def take(self, sid: str) -> float | None:
        """The backoff before the next attempt of shard `sid`, or None: no budget left."""
        n = self.attempts.get(sid, 0)
        delay = float(min(RETRY_FIRST_DELAY_S * 2**n, RETRY_MAX_DELAY_S, self.left))
        if self.left <= 0 or delay <= 0:
            return None
        self.attempts[sid] = n + 1
        self.left -= delay
        return delay

    def progressed(self, sid: str) -> None:
        """Shard `sid` committed chunks since its last failure: its next backoff starts over."""
        self.attempts.pop(sid, None)


def retryable(error: BaseException) -> bool:
    """Whether the run retries after `error` (within its budget): a transient delivery error,
    but not a stalled endpoint (nothing acknowledged for stall_timeout_s: the run ends within
    its bound)."""
    return isinstance(error, TransientDeliveryError) and not isinstance(error, DeliveryStalledError)


class ShardHost(Protocol):
    """What the scheduler asks of the run (pipeline/run.py `Run`)."""

    budget: RetryBudget
    stop: threading.Event  # set: start no new shard (Ctrl-C, SIGTERM)

    def work(self, shard: Shard) -> ShardWork: ...
    def absorb(self, shard: Shard, result: ShardResult) -> None: ...
    def reload(self, shard: Shard) -> None: ...
    def save_layout(self) -> None: ...


class _Loop:
    """The state of one `run_shards` call."""

    def __init__(self, host: ShardHost, runner: Runner, shards: list[Shard]) -> None:
        self.host, self.runner = host, runner
        self.pending: collections.deque[Shard] = collections.deque(shards)
        self.delayed: list[tuple[float, Shard]] = []  # (when, shard): retries waiting
        self.inflight: dict[Any, Shard] = {}
        self.first_error: BaseException | None = None

    def start_ready(self, now: float) -> None:
        if self.host.stop.is_set():  # interrupted: no new shard, no retry
            self.pending.clear()
            self.delayed.clear()
            return
        for item in [d for d in self.delayed if d[0] <= now]:
            self.delayed.remove(item)
            self.pending.appendleft(item[1])
        while (
            self.pending
            and self.first_error is None
            and len(self.inflight) < self.runner.slots()
            and self.admits(self.pending[0])
        ):
            shard = self.pending.popleft()
            work = self.runner.adapt(self.host.work(shard))
            self.inflight[self.runner.submit(work)] = shard

    def admits(self, shard: Shard) -> bool:
        """Whether `shard` may start beside the running ones: a runner with a row budget
        (`rows_in_flight`, the rows a run keeps in flight: a LocalRunner's chunks in flight x
        chunk rows) starts several shards at once only while their rows fit in it, so many
        small files run side by side while big ones run one after another, and memory and the
        rows a crash may send twice stay what one shard alone may have in flight."""
        budget: int | None = getattr(self.runner, "rows_in_flight", None)
        if budget is None or not self.inflight:
            return True
        used = sum(_rows(s, budget) for s in self.inflight.values())
        return used + _rows(shard, budget) <= budget

    def next_retry_in(self, now: float) -> float | None:
        return max(0.0, min(t for t, _ in self.delayed) - now) if self.delayed else None

    def finished(self, handle: Any, now: float) -> None:
        shard = self.inflight.pop(handle)
        error = _collect(self.host, self.runner, handle, shard)
        if error is None:
            return
        delay = None
        if retryable(error) and self.first_error is None:
            done = getattr(error, "shard_result", None)
            if isinstance(done, ShardResult) and done.counts.chunks_committed:
                self.host.budget.progressed(shard.sid)
            delay = self.host.budget.take(shard.sid)
        stall_left = getattr(self.host, "stall_left", None)
        if delay is not None and stall_left is not None:
            # Never wait past the stall deadline: the retry then fails as stalled at once.
            delay = max(0.0, min(delay, stall_left()))
        if delay is not None:  # routine: the error that ends the run is reported once
            log.info(
                "shard %d (%s): %s; retrying from its checkpoint in %.0f s",
                shard.index,
                shard.describe(),
                error,
                delay,
            )
            self.delayed.append((now + delay, shard))
        elif self.first_error is None:
            self.first_error = error
            self.delayed.clear()
            self.runner.stop()


def _rows(shard: Shard, budget: int) -> int:
    """The rows `shard` may keep in flight (unknown before reading, CSV/NDJSON: all of them)."""
    return budget if shard.rows is None else min(shard.rows, budget)


def run_shards(
    host: ShardHost,
    runner: Runner,
    shards: list[Shard],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> BaseException | None:
    """Run `shards` on `runner` until all ran or one failed for good; the first error."""
    loop = _Loop(host, runner, shards)
    saved = clock()
    try:
        while loop.pending or loop.inflight or loop.delayed:
            loop.start_ready(clock())
            retry_in = loop.next_retry_in(clock())
            if not loop.inflight:
                if retry_in is None:
                    break
                time.sleep(retry_in)
                continue
            timeout = (
                LAYOUT_SAVE_EVERY_S if retry_in is None else min(retry_in, LAYOUT_SAVE_EVERY_S)
            )
            for handle in runner.wait(list(loop.inflight), timeout):
                loop.finished(handle, clock())
            if clock() - saved >= LAYOUT_SAVE_EVERY_S:
                host.save_layout()
                saved = clock()
    except BaseException:  # KeyboardInterrupt, SystemExit: the running shards stop and count
        runner.stop()
        _drain(host, runner, loop.inflight)
        raise
    return loop.first_error


def _drain(host: ShardHost, runner: Runner, inflight: dict[Any, Shard]) -> None:
    """Collect the shards still running (they were told to stop)."""
    while inflight:
        for handle in runner.wait(list(inflight), None):
            _collect(host, runner, handle, inflight.pop(handle))


def _collect(host: ShardHost, runner: Runner, handle: Any, shard: Shard) -> BaseException | None:
    """Add a finished shard's result to the run; the error it failed with, if it did."""
    error: BaseException | None = None
    try:
        result: Any = runner.result(handle)
    except (KeyboardInterrupt, SystemExit) as exc:  # inside the shard: count it, then stop
        done = getattr(exc, "shard_result", None)
        if isinstance(done, ShardResult):
            host.absorb(shard, done)
        raise
    except BaseException as exc:  # a shard's error, or Dask's (KilledWorker, cancelled)
        error = exc
        result = getattr(exc, "shard_result", None)
        if not isinstance(error, TransientDeliveryError):
            log.error("shard %d (%s) failed: %s", shard.index, shard.describe(), exc)
    if isinstance(result, ShardResult):
        host.absorb(shard, result)
    else:
        host.reload(shard)
    return error


__all__ = ["LAYOUT_SAVE_EVERY_S", "RetryBudget", "ShardHost", "retryable", "run_shards"]
