"""A thread-safe token bucket that shapes traffic instead of provoking throttling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Tokens refill at *rate* per second up to *burst*; `acquire` never lets more through.

    `acquire(n)` reserves *n* tokens at once, even more than *burst* (the bucket goes into
    debt), and sleeps until the debt is repaid, so concurrent callers are served in order of
    arrival and the long-run rate never exceeds *rate*. The bucket starts EMPTY: the first
    call already waits ``n / rate`` seconds, so the first second cannot burst past the quota.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = rate
        self.burst = rate if burst is None else burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()

    def reserve(self, amount: float) -> float:
        """Take *amount* tokens now; return how long the caller must wait before using them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, amount: float) -> float:
        """Reserve *amount* tokens and sleep until they are available; return the wait."""
        wait = self.reserve(amount)
        if wait > 0:
            self._sleep(wait)
        return wait
