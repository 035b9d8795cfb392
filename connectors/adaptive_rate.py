"""Adaptive send rate for one stream: additive increase, multiplicative decrease (AIMD).

Used by `connectors.firehose.FirehoseSender` when no records/s or MiB/s limit is given and
``adaptive_rate`` is on. The sender starts unlimited. Two dimensions move together: records/s
and data bytes/s, so whichever quota Firehose enforces is respected.

* Decrease: on a call refused with ``ServiceUnavailableException`` (throughput exceeded), the
  limits become ``decrease_factor`` (0.7) times the rate ACHIEVED (records and bytes Firehose
  acknowledged) over the last ``window_s`` (1 s), never below ``min_records_per_s`` /
  ``min_bytes_per_s``. At most one decrease per ``hold_s`` (1 s): the calls in flight when the
  quota was hit come back throttled together and count once. A throttle with nothing
  acknowledged in the window is not a quota signal (a quota lets its rate through), so it
  does not lower the rate; the retry backoff handles it.
* Increase: every ``increase_interval_s`` (0.5 s) without a throttle, and while the limit is in
  use (the achieved rate is at least ``in_use_fraction`` of it), each limit grows by a fixed
  step: ``increase_per_s * increase_interval_s`` times the rate estimated at the last decrease
  (the achieved rate then, i.e. the quota). With 0.05/s the limit climbs from 0.7 to 1.0 of
  the quota in about 6 s; a server with a burst allowance lets it overshoot a little longer.

The rate is measured over a fixed window from the first call on: in the first second of
sending the estimate is what Firehose accepted so far (its burst allowance) divided by 1 s.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from connectors.rate_limit import RateLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AimdPolicy:
    decrease_factor: float = 0.7
    increase_per_s: float = 0.05  # of the quota estimate, per second without throttling
    increase_interval_s: float = 0.5
    hold_s: float = 1.0  # at most one decrease per hold_s
    window_s: float = 1.0  # the achieved rate is measured over this window
    in_use_fraction: float = 0.5  # grow only while achieving this fraction of the limit
    min_records_per_s: float = 500.0  # one full PutRecordBatch call per second
    min_bytes_per_s: float = 100 * 1024.0

    def __post_init__(self) -> None:
        if not 0 < self.decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
        if min(self.increase_interval_s, self.hold_s, self.window_s) <= 0:
            raise ValueError("intervals must be positive")


class AdaptiveRate:
    """AIMD control of a `RateLimiter` with dimensions (records/s, bytes/s); thread-safe.

    *progress* returns the sender's cumulative acknowledged (records, bytes).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        progress: Callable[[], tuple[int, int]],
        *,
        policy: AimdPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self.limiter = limiter
        self.policy = policy or AimdPolicy()
        self.name = name
        self._progress = progress
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        # (time, acknowledged records, bytes) from the first call on: the time before a run
        # starts sending (planning, reading) must not dilute the achieved rate
        self._samples: deque[tuple[float, int, int]] = deque()
        self.limits: tuple[float, float] | None = None  # None: unlimited
        self._step = (0.0, 0.0)
        self._decreased_at = -math.inf
        self._throttled_at = -math.inf
        self._increased_at = now
        self.decreases = 0
        self.increases = 0

    def _sample(self, now: float) -> None:
        samples = self._samples
        samples.append((now, *self._progress()))
        horizon = now - self.policy.window_s
        while len(samples) > 2 and samples[1][0] <= horizon:
            samples.popleft()  # keep one sample at or before the window's start

    def _achieved_locked(self, now: float) -> tuple[float, float]:
        """(records/s, bytes/s) acknowledged over the last window; callers sample `now` first."""
        t0, r0, b0 = self._samples[0]
        _, r1, b1 = self._samples[-1]
        span = max(self.policy.window_s, now - t0)
        return (r1 - r0) / span, (b1 - b0) / span

    def on_throttled(self) -> bool:
        """A call was refused for throughput: lower the limits (True) unless held."""
        p = self.policy
        with self._lock:
            now = self._clock()
            self._sample(now)
            self._throttled_at = now
            if now - self._decreased_at < p.hold_s:
                return False
            records, nbytes = self._achieved_locked(now)
            if records <= 0:
                return False  # nothing got through: not a quota, let the backoff handle it
            limits = (
                max(p.min_records_per_s, p.decrease_factor * records),
                max(p.min_bytes_per_s, p.decrease_factor * nbytes),
            )
            estimate = (limits[0] / p.decrease_factor, limits[1] / p.decrease_factor)
            grow = p.increase_per_s * p.increase_interval_s
            self._step = (grow * estimate[0], grow * estimate[1])
            self.limits = limits
            self._decreased_at = now
            self._increased_at = now
            self.decreases += 1
        self.limiter.set_rates(limits)
        log.info(
            "%s throttled: sending at most %.0f records/s, %.0f bytes/s (achieved %.0f, %.0f)",
            self.name,
            limits[0],
            limits[1],
            records,
            nbytes,
        )
        return True

    def tick(self) -> None:
        """Before each call: add the increase due since the last step, if any."""
        p = self.policy
        with self._lock:
            now = self._clock()
            if not self._samples or now - self._samples[-1][0] >= p.window_s / 4:
                self._sample(now)
            if self.limits is None:
                return
            quiet_since = max(self._increased_at, self._throttled_at)
            steps = int((now - quiet_since) / p.increase_interval_s)
            if steps <= 0:
                return
            if self._samples[-1][0] != now:
                self._sample(now)
            records, _ = self._achieved_locked(now)
            self._increased_at = quiet_since + steps * p.increase_interval_s
            if records < p.in_use_fraction * self.limits[0]:
                return  # the limit is not what holds the sender back: do not inflate it
            limits = (
                self.limits[0] + steps * self._step[0],
                self.limits[1] + steps * self._step[1],
            )
            self.limits = limits
            self.increases += steps
        self.limiter.set_rates(limits)


# Given limits are shaped to this fraction: client and service measure time differently, and
# the quota's exact measurement is unconfirmed (docs/throughput.md).
SHAPING_MARGIN = 0.98
SHAPING_BURST_S = 0.2  # the client's burst: a fifth of the 1 s a quota is stated over


class Shaping:
    """A sender's shaping (docs/throughput.md): given limits, at SHAPING_MARGIN of them;
    without limits and with `adaptive_rate`, unlimited until the service throttles, then AIMD
    (`sent`: records and bytes sent so far, `name`: what the AIMD log lines name). Neither:
    no shaping at all. Thread-safe; the senders' calls go through `wait` and report
    throttling with `throttled`."""

    def __init__(
        self,
        max_records_per_second: float | None,
        max_mib_per_second: float | None,
        adaptive_rate: bool,
        sent: Callable[[], tuple[int, int]],
        name: str,
    ) -> None:
        rates = (
            max_records_per_second * SHAPING_MARGIN if max_records_per_second else None,
            max_mib_per_second * 1024 * 1024 * SHAPING_MARGIN if max_mib_per_second else None,
        )
        self.limiter: RateLimiter | None = None
        self.adaptive: AdaptiveRate | None = None
        if rates == (None, None) and not adaptive_rate:
            return
        self.limiter = RateLimiter(rates, burst_s=SHAPING_BURST_S)
        if rates == (None, None):
            self.adaptive = AdaptiveRate(self.limiter, sent, name=name)

    @property
    def rates(self) -> tuple[float | None, float | None]:
        """The shaping now: (records/s, bytes/s), None where unlimited."""
        if self.limiter is None:
            return (None, None)
        records, nbytes = self.limiter.rates  # two dimensions: records and bytes
        return (records, nbytes)

    def wait(self, records: int, nbytes: int) -> None:
        """Block until a call of `records` records and `nbytes` bytes may be sent."""
        if self.adaptive is not None:
            self.adaptive.tick()
        if self.limiter is not None and self.limiter.rates != (None, None):
            self.limiter.acquire((records, nbytes))

    def throttled(self) -> None:
        """The service throttled a call (after counting what it acknowledged): AIMD decreases."""
        if self.adaptive is not None:
            self.adaptive.on_throttled()
