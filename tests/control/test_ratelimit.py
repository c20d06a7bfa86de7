"""The webhook endpoint's rate limit: a token bucket per replica, 429 + Retry-After past it, body unread."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from smith.control.ratelimit import TokenBucket
from tests.control.conftest import Control, operator_token, queued_payload


def test_a_flood_past_the_burst_is_answered_429_with_retry_after(control_factory: Callable[..., Control]) -> None:
    # A rate so low nothing refills during the test: exactly the burst gets in.
    control = control_factory(webhook_rate_per_second=0.001, webhook_burst=5)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: control.deliver(queued_payload(7000 + n)), range(40)))
    assert Counter(r.status_code for r in answers) == {202: 5, 429: 35}
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == "rate_limited" and refused.json()["retryable"] is True
    with control.client(operator_token()) as c:
        queued = c.get("/v1/jobs", params={"limit": 100}).json()
    assert len(queued) == 5  # the refused ones changed nothing


def test_a_refused_delivery_is_answered_before_its_body_is_read(control_factory: Callable[..., Control]) -> None:
    control = control_factory(webhook_rate_per_second=0.001, webhook_burst=1)
    assert control.deliver(queued_payload(7101)).status_code == 202
    head = (
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nX-GitHub-Event: workflow_job\r\n"
        f"X-GitHub-Delivery: flood\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", control.server.port)) as flood:
        flood.sendall(head.encode())  # no body at all: the answer cannot have waited for it
        flood.settimeout(15)
        answer = flood.recv(4096)
    assert answer.startswith(b"HTTP/1.1 429")
    assert b"retry-after:" in answer.lower() and b"connection: close" in answer.lower()
    assert control.server.config.app.state.webhook_bodies.used == 0


def test_rate_zero_means_no_limit(control_factory: Callable[..., Control]) -> None:
    control = control_factory(webhook_rate_per_second=0, webhook_burst=1)
    assert [control.deliver(queued_payload(7200 + n)).status_code for n in range(5)] == [202] * 5


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    now[0] = 0.5
    assert bucket.take() == 0.0
    now[0] = 100.0  # a long quiet spell refills only up to the burst
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)


def test_the_limit_covers_only_webhooks(control_factory: Callable[..., Control]) -> None:
    control = control_factory(webhook_rate_per_second=0.001, webhook_burst=1)
    control.deliver(queued_payload(7301))
    assert control.deliver(queued_payload(7302)).status_code == 429
    with control.client(operator_token()) as c:
        assert c.get("/v1/queue").status_code == 200
    assert httpx.get(control.url + "/healthz").status_code == 200
