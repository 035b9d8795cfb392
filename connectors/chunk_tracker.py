"""One chunk's future, resolved once all of its batches are done: what the Firehose sender and
the Collector sender share. A batch ends acknowledged, or with `BatchFailed` (permanent: the
chunk's other batches not started yet are cancelled; stalled; transient), or cancelled. The
chunk fails with the first permanent reason, else the stall, else the last transient one, and
says how many of its records were not acknowledged; the checkpoint then commits nothing of it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class Delivery:
    """What a sink did with a chunk's `records`: every record was acknowledged except the
    `refused` ones, each (its position in the submitted records, the destination's reason).
    A refused record is never retried: the engine rejects it (rejects file, rows_rejected)."""

    records: int
    refused: tuple[tuple[int, str], ...] = ()

    @property
    def delivered(self) -> int:
        return self.records - len(self.refused)


class BatchFailed(Exception):
    """One batch ended without every record acknowledged (internal to the senders)."""

    def __init__(
        self, unacked: int, reason: str, *, permanent: bool, stalled: bool = False
    ) -> None:
        super().__init__(reason)
        self.unacked = unacked
        self.reason = reason
        self.permanent = permanent
        self.stalled = stalled  # the endpoint acknowledged nothing for the sender's stall timeout


class BatchesTracker(Generic[R]):
    """Counts a chunk's batches as they finish; `_finish` resolves the chunk's future (`_fail`
    and `_result` say how, for each sender)."""

    def __init__(self, outer: Future[R], *, total: int, batches: int) -> None:
        self._outer = outer
        self._total = total
        self._remaining = batches
        self._unacked = 0
        self._permanent: str | None = None
        self._transient: str | None = None
        self._stalled: str | None = None
        self._lock = threading.Lock()
        self.futures: list[Future[Any]] = []

    def batch_done(self, future: Future[Any], *, size: int) -> None:
        cancel_siblings = False
        with self._lock:
            if future.cancelled():
                self._unacked += size
                self._transient = self._transient or "the sender was closed before sending"
            elif isinstance(exc := future.exception(), BatchFailed):
                self._unacked += exc.unacked
                if exc.permanent:
                    cancel_siblings = self._permanent is None
                    self._permanent = self._permanent or exc.reason
                elif exc.stalled:
                    self._stalled = self._stalled or exc.reason
                else:
                    self._transient = self._transient or exc.reason
            elif exc is not None:
                logger.error("unexpected error while sending a batch", exc_info=exc)
                self._unacked += size
                cancel_siblings = self._permanent is None
                self._permanent = self._permanent or (
                    f"unexpected {type(exc).__name__} while sending (a bug)"
                )
            else:
                self._acknowledged(future.result())
            self._remaining -= 1
            finished = self._remaining == 0
        if cancel_siblings:
            for sibling in self.futures:
                sibling.cancel()  # only batches not started yet; their callbacks count them
        if finished:
            self._finish()

    def _acknowledged(self, value: Any) -> None:
        """A batch was acknowledged with `value` (the Collector's: the actions it refused)."""

    def _finish(self) -> None:
        if self._permanent is None and self._stalled is None and not self._unacked:
            self._outer.set_result(self._result())
        else:
            self._outer.set_exception(self._fail(self._unacked, self._total))

    def _fail(self, unacked: int, total: int) -> BaseException:
        raise NotImplementedError

    def _result(self) -> R:
        raise NotImplementedError


__all__ = ["BatchFailed", "BatchesTracker", "Delivery"]
