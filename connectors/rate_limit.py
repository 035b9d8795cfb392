"""How long to wait: traffic shaping (a multi-dimension rate limiter) and the retry backoff."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class RateLimiter:
    """Traffic shaping over several dimensions at once (records/s and bytes/s of one stream).

    Each dimension *d* with a rate is a leaky bucket (GCRA): a `level` of tokens in use drains at
    ``rate[d]`` per second; a call of ``amounts[d]`` may go when ``level + amount <= burst``
    (``burst = rate * burst_s``) in EVERY dimension, or, for a call larger than the burst, when
    the level is 0; it then adds its amounts to the levels. So no window of *t* seconds carries
    more than ``rate * t + max(burst, largest call)`` in any dimension, and a backlog goes at
    exactly ``rate`` whatever the burst. A call takes its tokens only when it goes: threads that
    wait re-check after `set_rates`, so a lowered rate applies at once to calls not yet sent
    (the adaptive rate relies on this). A dimension whose rate is None is
    not limited. A bucket starts as if a call had just filled it: the first call waits
    ``amount / rate``, as does the first after a dimension becomes limited, so no burst
    follows the start or a rate being set.
    """

    def __init__(
        self,
        rates: Sequence[float | None],
        *,
        burst_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst_s < 0:
            raise ValueError("burst_s must not be negative")
        self.burst_s = burst_s
        self._clock = clock
        self._cond = threading.Condition()
        self._rates: list[float | None] = [None] * len(rates)
        self._levels = [0.0] * len(rates)
        self._fresh = [False] * len(rates)
        self._last = clock()
        self._apply(rates)

    @property
    def rates(self) -> tuple[float | None, ...]:
        with self._cond:
            return tuple(self._rates)

    def set_rates(self, rates: Sequence[float | None]) -> None:
        """Change the rates; waiting callers re-check at once."""
        with self._cond:
            self._drain(self._clock())
            self._apply(rates)
            self._cond.notify_all()

    def _apply(self, rates: Sequence[float | None]) -> None:
        if len(rates) != len(self._rates):
            raise ValueError(f"expected {len(self._rates)} rates, got {len(rates)}")
        for d, rate in enumerate(rates):
            if rate is not None and rate <= 0:
                raise ValueError(f"rates must be positive or None, got {rate!r}")
            if rate is not None and self._rates[d] is None:
                self._levels[d] = rate * self.burst_s  # newly limited: no burst
                self._fresh[d] = True
            self._rates[d] = rate

    def _drain(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        for d, rate in enumerate(self._rates):
            if rate is not None:
                self._levels[d] = max(0.0, self._levels[d] - elapsed * rate)
        self._last = now

    def _try_take_locked(self, amounts: Sequence[float]) -> float:
        self._drain(self._clock())
        wait = 0.0
        for d, rate in enumerate(self._rates):
            if rate is not None:
                if self._fresh[d]:
                    # The first call waits amount / rate, whatever its size and however long
                    # after construction (or the rate being set) it comes: the bucket counts
                    # as full at that moment, so no burst follows the start.
                    self._levels[d] = max(rate * self.burst_s, amounts[d])
                    self._fresh[d] = False
                allowed = max(0.0, rate * self.burst_s - amounts[d])
                wait = max(wait, (self._levels[d] - allowed) / rate)
        if wait > 1e-9:  # a caller that slept exactly `wait` is not sent back for rounding
            return wait
        for d, rate in enumerate(self._rates):
            if rate is not None:
                self._levels[d] += amounts[d]
        return 0.0

    def try_take(self, amounts: Sequence[float]) -> float:
        """Take *amounts* if they may go now (returns 0), else take nothing: seconds to wait."""
        with self._cond:
            return self._try_take_locked(amounts)

    def acquire(self, amounts: Sequence[float]) -> float:
        """Wait until *amounts* may go, take them; return the seconds waited."""
        start = time.monotonic()
        with self._cond:
            while True:
                wait = self._try_take_locked(amounts)
                if wait <= 0:
                    return time.monotonic() - start
                self._cond.wait(wait)


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
