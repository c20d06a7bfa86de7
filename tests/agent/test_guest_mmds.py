"""The guest agent polling Firecracker's MMDS (V2) for its config: one session token, a backoff.

A warm VM may wait minutes for its job; Firecracker's MMDS serves at most 30 connections. The MMDS here is a
small HTTP server with V2's rules (PUT /latest/api/token for a token; GETs without a valid one get 401).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from smith.guest.agent import read_mmds


class MMDS(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tokens: list[str] = []
        self.gets = 0
        self.ready_after = 6  # GETs answered 404 (no config yet) before the config is there
        self.config: dict[str, Any] = {"config": {"job": {"id": "j"}}, "now": 1.0, "seed": "00"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: MMDS

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        token = f"token-{len(self.server.tokens)}"
        self.server.tokens.append(token)
        self._answer(200, token.encode())

    def do_GET(self) -> None:
        if self.headers.get("X-metadata-token") not in self.server.tokens[-1:]:
            self._answer(401)
            return
        self.server.gets += 1
        if self.server.gets <= self.server.ready_after:
            self._answer(404)
            return
        self._answer(200, json.dumps(self.server.config).encode())


@pytest.fixture
def mmds() -> Iterator[MMDS]:
    server = MMDS()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_one_token_for_all_polls_and_the_polls_back_off(mmds: MMDS) -> None:
    sleeps: list[float] = []
    config = read_mmds(mmds.address, sleep=sleeps.append)
    assert config == mmds.config
    assert len(mmds.tokens) == 1  # not a fresh token (and connection) per poll
    assert len(sleeps) == mmds.ready_after
    assert sleeps == sorted(sleeps) and sleeps[0] == 0.05 and sleeps[-1] > sleeps[0]
    assert max(sleeps) <= 1.0


def test_a_refused_token_is_replaced(mmds: MMDS) -> None:
    mmds.ready_after = 2
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            mmds.tokens.append("someone-else")  # the first token is no longer the valid one (as after expiry)

    assert read_mmds(mmds.address, sleep=sleep) == mmds.config
    assert len(mmds.tokens) == 3  # ours, the intruder, and the one fetched after the 401


def test_a_clone_takes_the_network_identity_its_envelope_names() -> None:
    from smith.guest.agent import set_network

    ran: list[list[str]] = []
    net = {"ip": "172.30.0.9/24", "gw": "172.30.0.1", "mac": "06:00:ac:1e:00:09"}
    set_network(net, run=lambda argv, **_: ran.append(argv), iface="smith-no-such-if")
    assert ["ip", "link", "set", "smith-no-such-if", "address", "06:00:ac:1e:00:09"] in ran
    assert ["ip", "addr", "add", "172.30.0.9/24", "dev", "smith-no-such-if"] in ran
    assert ["ip", "route", "replace", "default", "via", "172.30.0.1"] in ran
    assert ran.index(["ip", "addr", "flush", "dev", "smith-no-such-if"]) < ran.index(
        ["ip", "addr", "add", "172.30.0.9/24", "dev", "smith-no-such-if"]
    )
