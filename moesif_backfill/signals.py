"""Ctrl-C and SIGTERM for the CLI: stop taking work, wait a little, leave in bounded time.

The CLI runs a command's work (the core, or its Prefect flow run) on a worker thread while the
main thread, which owns the signal handlers (`signal.signal` works only there), waits:

* The first SIGINT/SIGTERM sets `Interrupts.stop`, the event the core observes (pipeline/run.py
  `Run.stop`: the scheduler starts no new shard, the runner's shards no new chunk). The chunks
  in flight get at most `GRACE_S` seconds: each one acknowledged in that time is committed by
  the core (a chunk is committed only once every record in it was acknowledged, never before).
* Then the Prefect flow run, when there is one, is set Cancelled through the Prefect client
  (at most `CANCEL_TIMEOUT_S`), ONE line "interrupted: ... rerun to resume" is printed and the
  process exits 130 (SIGINT) or 143 (SIGTERM) at once, without waiting for threads still
  blocked on the network (`os._exit` after flushing stdout/stderr). The checkpoint is intact:
  every checkpoint write is atomic; a chunk still in flight is simply not committed, and a
  rerun sends it again (Moesif deduplicates on transaction_id).
* A second signal leaves at once (the same line, the same exit code), within a second.

Outside the main thread (an in-process caller on another thread) no handler is installed and
the work runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

GRACE_S = 3.0  # how long the chunks in flight may still be acknowledged
CANCEL_TIMEOUT_S = 1.2  # how long setting the Prefect flow run Cancelled may take
SECOND_CANCEL_TIMEOUT_S = 0.6  # the same after a second signal (leave within a second)
POLL_S = 0.2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
INTERRUPTED = "interrupted: the checkpoint holds every acknowledged chunk; rerun to resume"


class Interrupts:
    """The CLI's SIGINT/SIGTERM handlers (a context manager) and the bounded way out."""

    def __init__(self, message: str = INTERRUPTED) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None
        self.message = message
        self.cleanups: list[Callable[[], None]] = []  # before exiting (bounded each)
        self._previous: dict[int, Any] = {}
        self._leaving = threading.Lock()

    # ------------------------------------------------------------------ handlers
    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.stop.set()
            return
        self.leave(SECOND_CANCEL_TIMEOUT_S)  # a second signal: leave now

    @property
    def exit_code(self) -> int:
        return EXIT_SIGTERM if self.signum == signal.SIGTERM else EXIT_SIGINT

    # ------------------------------------------------------------------ running
    def run(self, work: Callable[[], T]) -> T:
        """`work()` on a worker thread; its result (or its exception, raised here). After a
        signal, `work` gets GRACE_S seconds to end, then the process leaves (`leave`)."""
        if not self.installed:
            return work()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work()
            except BaseException as exc:  # handed to the main thread
                box["error"] = exc

        worker = threading.Thread(target=target, name="command", daemon=True)
        worker.start()
        while worker.is_alive() and not self.stop.is_set():
            worker.join(POLL_S)
        if self.stop.is_set():
            worker.join(GRACE_S)
            self.leave()
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result

    def leave(self, timeout: float = CANCEL_TIMEOUT_S) -> NoReturn:
        """Clean up (at most `timeout` s), print the one "interrupted" line, exit 130/143."""
        if self._leaving.acquire(blocking=False):  # the first caller cleans up
            deadline = time.monotonic() + timeout
            for cleanup in self.cleanups:
                _bounded(cleanup, max(0.05, deadline - time.monotonic()))
            self._exit()
        self._exit()  # a second signal during the clean-up

    def _exit(self) -> NoReturn:
        try:
            sys.stdout.flush()
            sys.stderr.write(self.message + "\n")
            sys.stderr.flush()
        finally:
            os._exit(self.exit_code)


def _bounded(fn: Callable[[], None], timeout: float) -> None:
    """Run `fn` on a daemon thread for at most `timeout` seconds; its errors are ignored (the
    process is leaving; the line printed says what to do)."""

    def target() -> None:
        with contextlib.suppress(Exception):
            fn()

    thread = threading.Thread(target=target, name="cleanup", daemon=True)
    thread.start()
    thread.join(timeout)


__all__ = ["GRACE_S", "INTERRUPTED", "Interrupts"]
