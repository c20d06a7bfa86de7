"""One retry policy: exponential backoff with jitter, and the server's ``Retry-After`` when it gives one.

Attempt ``n`` (1, 2, ...) waits ``d = min(max, base * factor**(n-1))`` less a random part of it: with
``jitter=1`` ("full jitter") anywhere in ``[0, d]``, with ``0.5`` in ``[d/2, d]``, with ``0`` exactly ``d``. A
``Retry-After`` header (delta-seconds or an HTTP-date, RFC 9110 10.2.3) replaces the computed delay.

Used by the GitHub client, the S3 store, the agent's control plane client, its log shipper and its lease loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

_MAX_EXPONENT = 64  # factor**n past this is above any cap anyone sets, and far from a float overflow


@dataclass(frozen=True)
class RetryPolicy:
    retries: int | None = None  # how many times to try again after the first failure; None: no limit
    base: float = 0.1
    max: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0  # the share of each delay that is random: 1 full jitter, 0 none

    def __post_init__(self) -> None:
        if self.base < 0 or self.max < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"bad retry policy {self}: needs base, max >= 0, factor >= 1, 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based) without jitter."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return float(min(self.max, self.base * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        d = self.ceiling(attempt)
        return d - d * self.jitter * (rng or random).random()

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays before each retry, ``retries`` of them (endless when ``retries`` is None)."""
        attempt = 0
        while self.retries is None or attempt < self.retries:
            attempt += 1
            yield self.delay(attempt, rng)

    def wait(self, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """What to wait before retry ``attempt``: the server's ``Retry-After`` (capped at ``max``), else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max)
        return self.delay(attempt, rng)


def retry_after(header: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for, from delta-seconds or an HTTP-date; None if absent or unreadable.

    ``now`` is the wall clock (epoch seconds) a date is measured from. A date in the past means "now" (0)."""
    if header is None:
        return None
    text = header.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was "-0000"
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
