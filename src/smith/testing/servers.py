"""Run an ASGI app under a real uvicorn server on loopback, in a thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """``with ThreadedServer(app) as srv: httpx.get(srv.url + "/healthz")``"""

    def __init__(self, app: Any, *, port: int | None = None, **config: Any) -> None:
        self.app = app
        self.fixed_port = port is not None
        self.extra = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self._prepare(port or free_port())

    def _prepare(self, port: int) -> None:
        self.port = port
        self.config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            **self.extra,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        with contextlib.suppress(asyncio.CancelledError, SystemExit):  # stop() may cancel it; a bind error exits
            asyncio.run(main())

    def start(self, timeout: float = 15.0, attempts: int = 5) -> None:
        """Start and wait until it serves. A port picked by ``free_port`` can be taken by another process before
        uvicorn binds it (uvicorn then exits): another free port is tried, up to ``attempts`` times."""
        for attempt in range(attempts):
            self.thread.start()
            deadline = time.monotonic() + timeout
            while not self.server.started:
                if not self.thread.is_alive():
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.01)
            if self.server.started:
                return
            if self.fixed_port or attempt == attempts - 1:
                raise RuntimeError(f"server did not start on port {self.port}")
            self._prepare(free_port())

    def stop(self) -> None:
        """Stop for sure: a server left running (its background tasks too) would leak into later tests."""
        self.server.should_exit = True
        self.thread.join(5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(3)
        if self.thread.is_alive() and self.loop is not None:
            # Seen on Python 3.11.7: uvicorn's shutdown can wait forever on asyncio's Server.wait_closed().
            # Cancel everything on the server's loop, so no background task outlives its test.
            loop = self.loop
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
            self.thread.join(5)
        if self.thread.is_alive():
            stuck = [
                f"{t.get_coro()!r} at {[f'{fr.f_code.co_filename}:{fr.f_lineno}' for fr in t.get_stack()]}"
                for t in asyncio.all_tasks(self.loop)
            ]
            raise RuntimeError(f"server on port {self.port} did not stop; tasks: {stuck}")

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(url: str, proc: Any = None, *, seconds: float = 60.0) -> bool:
    """Poll ``url`` until it answers 200; False if ``proc`` (a Popen) exits first or time runs out."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False
