"""How every Smith HTTP service is served: uvicorn with limits on what a connection may hold.

uvicorn alone lets a client keep a connection forever by sending its request headers slowly (h11 and httptools
have no header timeout), accepts connections until the process runs out of file descriptors, and then logs an
error for every failed ``accept()``. Here, for every service (control plane, log pipeline, cache server, ``smith
dev``):

- a connection must finish its request headers within ``SMITH_HTTP_HEADER_TIMEOUT_SECONDS`` of connecting (or of
  its previous response), else it is closed; an idle keep-alive connection is closed after
  ``SMITH_HTTP_KEEPALIVE_SECONDS``;
- at most ``SMITH_HTTP_MAX_CONNECTIONS`` connections are open (never more than half the descriptor limit): past
  it, the connection idle the longest (waiting for headers, or between requests) is closed to make room, or the
  new one if every connection is busy in a request;
- the soft RLIMIT_NOFILE is raised to the hard limit at start;
- accept errors are logged at most once per ``ACCEPT_LOG_INTERVAL`` with the count of those not logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from smith.logging import get_logger
from smith.settings import CommonSettings

log = get_logger("smith.http.server")
ACCEPT_LOG_INTERVAL = 10.0
_FD_RESERVE = 64  # descriptors kept for everything but client connections (files, Redis, ClickHouse...)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a cap on open connections (see the module)."""

    idle_since: float | None = None  # waiting for request headers since (monotonic), or None while in a request
    _header_timer: asyncio.TimerHandle | None = None

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # Set on the config by ``config()`` (it travels to worker processes with it).
        self.header_timeout: float = getattr(config, "smith_header_timeout", 10.0)
        self.max_connections: int = getattr(config, "smith_max_connections", 4096)
        if self.loop.get_exception_handler() is None:  # (in every worker process, before accept() can fail)
            self.loop.set_exception_handler(accept_error_handler)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.max_connections:
            idle = [c for c in self.connections if isinstance(c, GuardedProtocol) and c.idle_since is not None]
            victim = min(idle, key=lambda c: c.idle_since or 0.0) if idle else self
            _refused.note()
            victim.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.idle_since is None:  # a pipelined request: its headers get the same time
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_timer()
        self.idle_since = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()

    def _await_headers(self) -> None:
        self._stop_timer()
        self.idle_since = time.monotonic()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.idle_since is not None and not self.transport.is_closing():
            self.transport.close()


class _Throttled:
    """Counts events; logs the first, then at most one line per interval with how many happened since."""

    def __init__(self, message: str, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self.message, self.interval = message, interval
        self.count = 0
        self.logged_at = -interval
        self.logged = 0

    def note(self, **fields: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= self.interval:
            log.warning(self.message, count=self.count, **fields)
            self.logged_at, self.count = now, 0
            self.logged += 1


_refused = _Throttled("connections over SMITH_HTTP_MAX_CONNECTIONS closed")
_accept_errors = _Throttled("accept() failed (descriptors or memory exhausted?)")


def accept_error_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: accept() failures are counted and logged at a bounded rate, the rest
    go to the default handler."""
    message = str(context.get("message", ""))
    if "accept" in message.lower():
        _accept_errors.note(error=repr(context.get("exception")))
        return
    loop.default_exception_handler(context)


def config(app: Any, settings: CommonSettings, *, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """A uvicorn config for ``app`` with the service's connection limits (and the descriptor limit raised).
    An ``http`` protocol class in ``extra`` (the cache's header cap) is combined with ``GuardedProtocol``."""
    soft = raise_nofile_limit()
    http = extra.pop("http", None)
    protocol = GuardedProtocol if http is None else type(http.__name__, (http, GuardedProtocol), {})
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        backlog=settings.http_backlog,
        timeout_keep_alive=int(max(1, settings.http_keepalive_seconds)),
        log_level="warning",
        access_log=False,
        **extra,
    )
    cfg.smith_header_timeout = settings.http_header_timeout_seconds  # type: ignore[attr-defined]
    cfg.smith_max_connections = max(1, min(settings.http_max_connections, (soft - _FD_RESERVE) // 2))  # type: ignore[attr-defined]
    return cfg


def run(app: Any, settings: CommonSettings, *, host: str, port: int, **extra: Any) -> None:
    """Serve until SIGINT/SIGTERM."""
    uvicorn.Server(config(app, settings, host=host, port=port, **extra)).run()
