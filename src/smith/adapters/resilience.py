"""Retries with exponential backoff and full jitter, and a circuit breaker, for calls to a remote store.

``Resilient.call(fn)`` runs a blocking function in a worker thread. A retryable failure (``Unavailable``) is
tried again after the policy's backoff (``smith.retry``, full jitter), up to ``retries`` more times. After
``failures`` consecutive failed calls the circuit opens: calls fail at once with ``Unavailable`` (no thread, no
network) for ``reset`` seconds; then one probe call is let through, and its success closes the circuit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from smith.errors import SmithError, Unavailable
from smith.retry import RetryPolicy

T = TypeVar("T")


class CircuitBreaker:
    def __init__(self, failures: int = 5, reset: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset = reset
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset else "open"

    def before(self) -> None:
        """Raise ``Unavailable`` while open; let one probe through once ``reset`` has passed."""
        if self.opened_at is None:
            return
        waited = self.clock() - self.opened_at
        if waited < self.reset or self._probing:
            raise Unavailable("store circuit open after repeated failures", retry_after=max(0.0, self.reset - waited))
        self._probing = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self._probing = False


class Resilient:
    """Run blocking store calls in threads, with retries and one shared circuit breaker."""

    def __init__(self, policy: RetryPolicy, breaker: CircuitBreaker, translate: Callable[[BaseException], SmithError]):
        self.policy = policy
        self.breaker = breaker
        self.translate = translate

    async def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        attempt = 0
        while True:
            self.breaker.before()
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                err = exc if isinstance(exc, SmithError) else self.translate(exc)
                if not err.retryable:
                    self.breaker.success()  # the store answered; the request was wrong
                    raise err from exc
                if self.policy.retries is not None and attempt >= self.policy.retries:
                    self.breaker.failure()
                    raise err from exc
                attempt += 1
                await asyncio.sleep(self.policy.delay(attempt))
                continue
            self.breaker.success()
            return result
