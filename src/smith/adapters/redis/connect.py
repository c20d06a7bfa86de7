"""Redis connections and the mapping of redis-py errors to ours."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from smith.errors import ConfigError, SmithError, Unavailable

T = TypeVar("T")


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?db=N]``: the Sentinels
    to ask, the monitored service name, the database. The password is the data servers' (Sentinels are asked
    without one unless ``sentinel_password`` is in the query). ``rediss+sentinel`` uses TLS to the data servers."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def parse_sentinel(url: str) -> SentinelURL:
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigError(f"not a Sentinel URL (scheme {parts.scheme!r})")
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = item.strip(), "26379"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError as exc:
            raise ConfigError(f"bad Sentinel address {item!r}") from exc
    path = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)
    if not path or not all(h for h, _ in hosts):
        raise ConfigError("a Sentinel URL needs host:port[,host:port...] and /service_name")
    try:
        db = int(path[1]) if len(path) > 1 else int(query.get("db", ["0"])[0])
    except ValueError as exc:
        raise ConfigError(f"bad database number in {url!r}") from exc
    return SentinelURL(
        sentinels=tuple(hosts),
        service=unquote(path[0]),
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        tls=parts.scheme.startswith("rediss"),
    )


def client(url: str, *, max_connections: int = 512, socket_timeout: float = 5.0) -> aioredis.Redis:
    """A client with decoded strings and short timeouts. Blocking reads (XREADGROUP BLOCK) need a client whose
    ``socket_timeout`` is longer than the longest block, or the wait itself times out.

    redis-py resends a command after a connection error or a timeout (scripts are made replayable for that,
    replay.py) and after READONLY: a primary demoted in a failover refused the write without running it, so the
    connection is dropped and the command goes out again on a new one (to the new primary, through Sentinel or
    a moved address). ``redis+sentinel://`` URLs go through redis-py's Sentinel client."""
    options: dict[str, Any] = dict(
        decode_responses=True,
        max_connections=max_connections,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[rexc.ConnectionError, rexc.ReadOnlyError],
    )
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(parse_sentinel(url), options)
    if scheme in CLUSTER_SCHEMES:
        return _cluster_client(url, options)
    return aioredis.Redis.from_url(url, **options)


def parse_cluster(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """``redis+cluster://[user:password@]host:port[,host:port...]``: seed nodes, username, password, TLS."""
    parts = urlsplit(url)
    nodes = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, sep, port = item.strip().rpartition(":")
        try:
            nodes.append((host.strip("[]"), int(port) if sep else 6379))
        except ValueError as exc:
            raise ConfigError(f"bad Redis Cluster address {item!r}") from exc
    if not nodes or not all(h for h, _ in nodes):
        raise ConfigError("a Redis Cluster URL needs host:port[,host:port...]")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return nodes, user, password, parts.scheme.startswith("rediss")


def _cluster_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    """redis-py's cluster client. Every Smith key carries the ``{smith}`` hash tag (keys.py), so each command,
    script and pipeline goes to the one node that owns that slot; MOVED and ASK after a resharding or a
    failover are followed by the client. It offers the commands Smith uses with the same signatures."""
    nodes, user, password, tls = parse_cluster(url)
    opts = {k: v for k, v in options.items() if k not in ("retry_on_error",)}
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in nodes],
        username=user,
        password=password,
        ssl=tls,
        **opts,
    )
    return cast(aioredis.Redis, cluster)


def _sentinel_client(cfg: SentinelURL, options: dict[str, Any]) -> aioredis.Redis:
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}
    if cfg.sentinel_password:
        sentinel_kwargs["password"] = cfg.sentinel_password
    sentinel = Sentinel(list(cfg.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    if cfg.tls:
        options = {**options, "ssl": True}
    master: aioredis.Redis = sentinel.master_for(
        cfg.service, db=cfg.db, username=cfg.username, password=cfg.password, **options
    )
    return master


class StoreFailure(SmithError):
    """A Redis error that is none of the known outages (500); a webhook delivery that meets one is spooled."""


# Replies of a server changing role: a blocked command released by a demotion, a replica without its primary.
FAILOVER_ERRORS = ("UNBLOCKED", "MASTERDOWN", "LOADING", "NOREPLICAS")


def translate(exc: BaseException) -> SmithError:
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.BusyLoadingError | OSError):
        return Unavailable(f"redis unavailable: {type(exc).__name__}", retry_after=1.0)
    if isinstance(exc, rexc.ReadOnlyError):
        return Unavailable("redis is read-only (a replica or failover in progress)", retry_after=1.0)
    if isinstance(exc, rexc.OutOfMemoryError) or (isinstance(exc, rexc.ResponseError) and str(exc).startswith("OOM")):
        return Unavailable("redis is out of memory (maxmemory reached; see docs/deploy.md)", retry_after=5.0)
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(FAILOVER_ERRORS):
        return Unavailable(f"redis failover in progress: {str(exc)[:80]}", retry_after=1.0)
    return StoreFailure(f"redis error: {exc}")


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
