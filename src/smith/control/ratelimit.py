"""A token bucket for the webhook endpoint: ``rate`` deliveries per second on average, bursts up to ``burst``.

One bucket per process (per replica, per worker): behind a load balancer the fleet admits the sum of its
replicas' rates. A delivery refused here is answered 429 with Retry-After before its body is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is (nothing taken)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate
