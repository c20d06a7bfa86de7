"""Retries with exponential backoff and full jitter, and a circuit breaker, for calls to a remote store.

``Resilient.call(fn)`` runs a blocking function in a worker thread. A retryable failure (``Unavailable``) is
tried again after the policy's backoff (``smith.retry``, full jitter), up to ``retries`` more times. After
``failures`` consecutive failed calls the circuit opens: calls fail at once with ``Unavailable`` (no thread, no
network) for ``reset`` seconds; then one probe call is let through, and its success closes the circuit.

The breaker is consulted once per call, not per attempt: a probe keeps its slot through its own retries and
always ends with an outcome (success, failure, or, when it is cancelled, the slot given back), so the circuit
can never stay open for good with no probe running.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from smith.errors import SmithError, Unavailable
from smith.metrics import STORE_ERRORS
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

    def before(self) -> bool:
        """Raise ``Unavailable`` while open; let one probe through once ``reset`` has passed (True: this call is
        the probe, and must end with ``success``, ``failure`` or ``abandon``)."""
        self.refuse_if_open()
        if self.opened_at is None:
            return False
        self._probing = True
        return True

    def refuse_if_open(self) -> None:
        """Raise ``Unavailable`` when a call now would be refused, without taking the probe slot."""
        if self.opened_at is None:
            return
        waited = self.clock() - self.opened_at
        if waited < self.reset or self._probing:
            raise Unavailable("store circuit open after repeated failures", retry_after=max(0.0, self.reset - waited))

    def abandon(self) -> None:
        """A probe ended without an answer (cancelled): give its slot back, so the next call probes."""
        self._probing = False

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

    def __init__(
        self,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        translate: Callable[[BaseException], SmithError],
        executor: Executor | None = None,
    ):
        self.policy = policy
        self.breaker = breaker
        self.translate = translate
        self.executor = executor  # None: asyncio's default pool

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in this caller's thread pool, without retries or the breaker."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        probe = self.breaker.before()
        settled = False
        try:
            result = await self._attempts(probe, fn, *args, **kwargs)
            settled = True
            return result
        except SmithError:
            settled = True
            raise
        finally:
            if probe and not settled:
                self.breaker.abandon()

    async def _attempts(self, probe: bool, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        attempt = 0
        while True:
            try:
                result = await self.run(functools.partial(fn, *args, **kwargs))
            except Exception as exc:
                err = exc if isinstance(exc, SmithError) else self.translate(exc)
                STORE_ERRORS.labels(code=err.code).inc()
                if not err.retryable:
                    self.breaker.success()  # the store answered; the request was wrong
                    raise err from exc
                out_of_tries = self.policy.retries is not None and attempt >= self.policy.retries
                if out_of_tries or (not probe and self.breaker.state == "open"):
                    self.breaker.failure()
                    raise err from exc
                attempt += 1
                await asyncio.sleep(self.policy.delay(attempt))
                continue
            self.breaker.success()
            return result
