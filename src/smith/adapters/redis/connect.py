"""Redis connections and the mapping of redis-py errors to ours."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from smith.errors import SmithError, Unavailable

T = TypeVar("T")


def client(url: str, *, max_connections: int = 512, socket_timeout: float = 5.0) -> aioredis.Redis:
    """A client with decoded strings and short timeouts. Blocking reads (XREADGROUP BLOCK) need a client whose
    ``socket_timeout`` is longer than the longest block, or the wait itself times out."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        # A pooled connection that died with a server restart fails on first use: reconnect and resend. Only
        # connection errors are retried (the command did not reach the server), never timeouts.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[rexc.ConnectionError],
    )


def translate(exc: BaseException) -> SmithError:
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.BusyLoadingError | OSError):
        return Unavailable(f"redis unavailable: {type(exc).__name__}", retry_after=1.0)
    if isinstance(exc, rexc.ReadOnlyError):
        return Unavailable("redis is read-only (a replica or failover in progress)", retry_after=1.0)
    return SmithError(f"redis error: {exc}")


class Reachability:
    """Whether Redis was unreachable from this process, and since when it answers again (monotonic clock):
    reclaim waits a lease TTL after that."""

    def __init__(self) -> None:
        self.down = False
        self.back_at: float | None = None

    def failed(self) -> None:
        self.down = True

    def answered(self) -> None:
        if self.down:
            self.down, self.back_at = False, time.monotonic()

    def quiet_for(self) -> float:
        """Seconds Redis has answered since it was last unreachable from here (infinite if it never was)."""
        if self.down:
            return 0.0
        return math.inf if self.back_at is None else time.monotonic() - self.back_at


@asynccontextmanager
async def errors(reach: Reachability | None = None) -> AsyncIterator[None]:
    """Turn redis-py exceptions raised inside the block into ``smith.errors``; an unavailable Redis is noted in
    ``reach``."""
    try:
        yield
    except SmithError:
        raise
    except (rexc.RedisError, OSError) as exc:
        out = translate(exc)
        if reach is not None and isinstance(out, Unavailable):
            reach.failed()
        raise out from exc


async def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    async with errors():
        return await fn(*args, **kwargs)
