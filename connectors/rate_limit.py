"""How long to wait: a thread-safe token bucket (traffic shaping) and the retry backoff policy."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


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


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    Retry *n* (1 for the first resend) waits ``uniform(0, min(max_delay_s, base_delay_s *
    2 ** (n - 1)))`` seconds.
    """

    max_attempts: int = 10  # attempts per batch, counting the first
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must not be negative")

    def delay(self, retry_number: int, rng: random.Random) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(retry_number - 1, 60))
        return rng.uniform(0.0, cap)
