"""The stall bound of a Firehose sender (RunSettings.stall_timeout_s): how long a stream may
acknowledge nothing while its calls fail (an endpoint lost: connections refused, dropped or
never answered) before the batches still trying give up (`DeliveryStalledError`).

An idle stream is not stalled: the clock starts with the first call that got nothing
acknowledged since the last acknowledgement, and any acknowledgement stops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("connectors.firehose")

STALL_WARN_S = 10.0  # one warning once a stream has acknowledged nothing for this long


class StallClock:
    """One sender's stall clock (thread-safe)."""

    def __init__(
        self,
        stream_name: str,
        timeout_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        label: str = "Firehose stream",
    ) -> None:
        self.stream_name = stream_name
        self.label = label
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # start of the first call of the stall
        self._warned = False

    def now(self) -> float:
        return self._clock()

    def acknowledged(self) -> None:
        with self._lock:
            self._failing_since = None
            self._warned = False

    def failed(self, started: float) -> None:
        """A call that started at `started` got nothing acknowledged."""
        with self._lock:
            if self._failing_since is None:
                self._failing_since = started

    def stalled_for(self) -> float:
        """Seconds the stream has acknowledged nothing while calls failed (0: not failing)."""
        with self._lock:
            start = self._failing_since
        return 0.0 if start is None else self._clock() - start

    def left(self, reason: str) -> float:
        """Seconds left before the timeout (inf without one); warns once per stall."""
        if self.timeout_s is None:
            return float("inf")
        since = self.stalled_for()
        with self._lock:
            warn = since >= STALL_WARN_S and not self._warned
            self._warned = self._warned or warn
        if warn:
            logger.warning(
                "%s %r has acknowledged nothing for %.0f s (%s); the run fails if "
                "that lasts %.0f s (stall_timeout_s)",
                self.label,
                self.stream_name,
                since,
                reason,
                self.timeout_s,
            )
        return self.timeout_s - since

    def reason(self, endpoint: str, last_error: str, stats: object) -> str:
        """The message of a stalled batch: what failed, for how long, what was tried."""

        def count(name: str) -> int:
            return int(getattr(stats, name, 0))

        return (
            f"Firehose stream {self.stream_name!r} at {endpoint} acknowledged nothing for "
            f"{self.timeout_s or 0:.0f} s (stall_timeout_s; last error: {last_error}; calls so "
            f"far: {count('firehose_calls')}, connection errors {count('connection_errors')}, "
            f"server errors {count('server_errors')}, throttled {count('throttled_calls')}): "
            "the endpoint refuses or drops connections, or does not answer"
        )


__all__ = ["STALL_WARN_S", "StallClock"]
