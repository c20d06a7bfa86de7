"""Redis connections and the mapping of redis-py errors to ours."""

from __future__ import annotations

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


@asynccontextmanager
async def errors() -> AsyncIterator[None]:
    """Turn redis-py exceptions raised inside the block into ``smith.errors``."""
    try:
        yield
    except SmithError:
        raise
    except (rexc.RedisError, OSError) as exc:
        raise translate(exc) from exc


async def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    async with errors():
        return await fn(*args, **kwargs)
