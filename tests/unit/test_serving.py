"""Issue 9, item 5: slow connections cannot exhaust the server (smith.serving), against a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from smith import serving
from smith.settings import CommonSettings
from smith.testing.servers import ThreadedServer

SLOW = 200
LIMIT = 50
HEADER_TIMEOUT = 1.0


def app() -> FastAPI:
    a = FastAPI()

    @a.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return a


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    settings = CommonSettings(http_max_connections=LIMIT, http_header_timeout_seconds=HEADER_TIMEOUT)
    cfg = serving.config(app(), settings, host="127.0.0.1", port=0)
    srv = ThreadedServer(app(), http=cfg.http, timeout_keep_alive=cfg.timeout_keep_alive)
    srv.config.smith_header_timeout = HEADER_TIMEOUT  # type: ignore[attr-defined]
    srv.config.smith_max_connections = LIMIT  # type: ignore[attr-defined]
    with srv:
        yield srv


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closes this connection (within 15 s: far past the header timeout)."""
    s.settimeout(15)
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_connections_are_closed_and_healthz_still_answers(server: ThreadedServer) -> None:
    slow = []
    try:
        for _ in range(SLOW):  # each sends a request line and one header, then nothing more
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        # While they hold on, a real request gets its answer (the longest idle connection makes room for it).
        assert httpx.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
        # Every slow connection is closed: those over the limit at once, the others at the header timeout.
        assert sum(closed_by_server(s) for s in slow) == SLOW
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        for s in slow:
            s.close()


def test_a_trickle_of_header_lines_does_not_keep_a_connection(server: ThreadedServer) -> None:
    """One header line every 0.2 s for 10 s: closed at the header timeout (the deadline is for all headers)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    stop = threading.Event()

    def trickle() -> None:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        for n in range(50):
            if stop.wait(0.2):
                return
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % n)
            except OSError:
                return

    t = threading.Thread(target=trickle)
    t.start()
    try:
        s.settimeout(15)
        try:
            got = s.recv(1024)
        except ConnectionResetError:
            got = b""
        assert got == b"" and t.is_alive()  # closed while the client was still sending headers
    finally:
        stop.set()
        t.join()
        s.close()


def test_a_keep_alive_connection_still_serves_requests(server: ThreadedServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200


def test_accept_errors_are_logged_at_a_bounded_rate() -> None:
    loop = asyncio.new_event_loop()
    try:
        before = serving._accept_errors.logged
        for _ in range(10_000):
            serving.accept_error_handler(
                loop, {"message": "socket.accept() out of system resource", "exception": OSError(24, "EMFILE")}
            )
        assert serving._accept_errors.logged - before <= 1
    finally:
        loop.close()


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert serving.raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if hard != resource.RLIM_INFINITY:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard))


def test_a_service_protocol_is_combined_with_the_guards() -> None:
    """`smith cache serve` passes its header-capped protocol as ``http``: uvicorn got ``http`` twice and the
    command failed at start; now the config's protocol is both."""
    from smith.cache.limits import LimitedHttpToolsProtocol, uvicorn_options

    cfg = serving.config(app(), CommonSettings(), host="127.0.0.1", port=0, **uvicorn_options(1024))
    assert isinstance(cfg.http, type)
    assert issubclass(cfg.http, LimitedHttpToolsProtocol)
    assert issubclass(cfg.http, serving.GuardedProtocol)
    assert cfg.http.max_head_bytes == 1024
