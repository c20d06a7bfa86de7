"""Issue 9 against the control plane and a real Valkey: per-job log tokens, and agent ids that cannot widen a
Redis query to every agent."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import jwt
import pytest

from smith import tokens
from smith.adapters.redis import connect
from smith.adapters.redis.jobs import RedisJobs
from smith.errors import InvalidInput
from tests.attacks import push_body
from tests.control.conftest import AGENT_SECRET, Control, operator_token, queued_payload, signed

BIG = {"free_vcpus": 64, "free_memory_mib": 262144, "wait_seconds": 2}


def forged_agent_token(agent_id: str, sub: str = "") -> str:
    """An agent token with any id, signed with the real secret (what `smith auth agent-token --agent-id ""` made)."""
    now = int(time.time())
    claims = {"sub": sub, "scope": "agent", "agent_id": agent_id, "iat": now, "exp": now + 600}
    return jwt.encode(claims, AGENT_SECRET, algorithm="HS256")


def test_a_lease_carries_a_log_token_for_that_job_and_agent(control: Control) -> None:
    control.deliver(queued_payload(9101))
    got = control.agent("agent-logs").post("/v1/agents/lease", json=BIG).json()
    claims = tokens.verify(AGENT_SECRET, got["logs_token"], scope="logs")
    assert claims["job_id"] == "9101" and claims["agent_id"] == "agent-logs"
    assert claims["exp"] - claims["iat"] == int(control.settings.logs_token_ttl_seconds)
    assert tokens.verify_logs(AGENT_SECRET, f"Bearer {got['logs_token']}") == ("9101", "agent-logs")


@pytest.mark.parametrize("agent_id", ["", " ", "a b", "*", "-x", "x" * 65, "a\nb"])
def test_an_agent_token_with_a_bad_id_releases_nobodys_leases(control: Control, agent_id: str) -> None:
    n = 9200 + len(agent_id) * 3 + (ord(agent_id[-1]) % 3 if agent_id else 0)
    control.deliver(queued_payload(n))
    control.deliver(queued_payload(n + 100))
    a, b = control.agent("agent-a"), control.agent("agent-b")
    leased = {
        a.post("/v1/agents/lease", json=BIG).json()["job"]["id"],
        b.post("/v1/agents/lease", json=BIG).json()["job"]["id"],
    }
    assert leased == {str(n), str(n + 100)}
    body = {"hostname": "evil", "vcpus": 1, "memory_mib": 1, "max_vms": 1}
    with control.client(forged_agent_token(agent_id)) as evil:
        r = evil.post("/v1/agents/register", json=body)
        with control.client(operator_token()) as op:
            states = {op.get(f"/v1/jobs/{j}").json()["state"] for j in leased}
        assert states == {"assigned"}  # not re-queued, so never run twice
        assert r.status_code == 403, r.text
        assert evil.post("/v1/agents/heartbeat", json={"running": [str(n)]}).status_code == 403
        assert evil.post("/v1/agents/lease", json=BIG).status_code == 403


def test_the_sub_claim_is_checked_too(control: Control) -> None:
    with control.client(forged_agent_token("", sub="")) as c:
        assert c.post("/v1/agents/heartbeat", json={"running": []}).status_code == 403


@pytest.mark.parametrize("agent_id", ["", "a b"])
async def test_the_adapter_refuses_a_consumer_that_is_no_agent(redis_url: str, agent_id: str) -> None:
    jobs = RedisJobs(connect.client(redis_url))
    try:
        with pytest.raises(InvalidInput):
            await jobs.release_agent(agent_id, ["smith-2vcpu"], 3)
        with pytest.raises(InvalidInput):
            await jobs.lease(agent_id, ["smith-2vcpu"], 0)
        with pytest.raises(InvalidInput):
            await jobs.renew(agent_id, [])
    finally:
        await jobs.r.aclose()


def test_tokens_with_bad_agent_ids_are_not_minted() -> None:
    for bad in ("", "a b", "x" * 65):
        with pytest.raises(ValueError):
            tokens.mint(AGENT_SECRET, scope="agent", subject=bad, ttl_seconds=60, agent_id=bad)
        with pytest.raises(ValueError):
            tokens.mint_logs(AGENT_SECRET, job_id="j", agent_id=bad, ttl_seconds=60)


def test_the_cli_does_not_mint_an_agent_token_with_an_empty_id() -> None:
    from typer.testing import CliRunner

    from smith.cli import app

    env = {"SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET}
    for bad in ("", "a b"):
        res = CliRunner().invoke(app, ["auth", "agent-token", "--agent-id", bad], env=env, catch_exceptions=False)
        assert res.exit_code == 1 and "agent id" in res.output and "eyJ" not in res.output


BIG_BODY = 50 * 1024 * 1024
KERNEL_SLACK = 16 * 1024 * 1024  # what socket buffers on both ends can take in without the server reading


@pytest.mark.parametrize(
    ("path", "size"),
    [
        ("/v1/agents/heartbeat", BIG_BODY),
        ("/v1/agents/register", BIG_BODY),
        ("/v1/jobs", BIG_BODY),
        ("/webhooks/github", 20 * 1024 * 1024),  # under the webhook limit, with no signature header
    ],
)
def test_an_unauthenticated_body_is_not_read(control: Control, path: str, size: int) -> None:
    """A big body with no credentials: refused before the server reads it (it read all of it before)."""
    status, sent = push_body(control.url, path, size)
    assert sent < KERNEL_SLACK
    assert status in (401, 413, None)  # None: the refusal came with a close that reset the connection
    assert httpx.get(control.url + "/healthz").status_code == 200


def test_an_authenticated_body_is_bounded(control: Control) -> None:
    token = control.agent("agent-big").headers["authorization"]
    status, sent = push_body(control.url, "/v1/agents/heartbeat", BIG_BODY, {"Authorization": token})
    assert status in (413, None) and sent < KERNEL_SLACK

    # Without a Content-Length (chunked), the stream is counted: 413 past the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"running": ["' + b"x" * (control.settings.agent_max_body_bytes + 1) + b'"]}'

    with control.client() as c:
        r = c.post("/v1/agents/heartbeat", content=chunks(), headers={"Authorization": token})
        assert r.status_code == 413
        ok = c.post("/v1/agents/heartbeat", json={"running": []}, headers={"Authorization": token})
        assert ok.status_code == 200


def test_a_webhook_over_the_limit_is_refused_unread(control: Control) -> None:
    body_headers = signed(b"{}")
    status, sent = push_body(control.url, "/webhooks/github", BIG_BODY, body_headers)
    assert status in (413, None) and sent < KERNEL_SLACK


def test_log_tokens_can_have_their_own_secret(control_factory: Callable[..., Control]) -> None:
    control = control_factory(logs_token_secret="logs-secret-for-tests-0123456789abcdef")
    control.deliver(queued_payload(9301))
    got = control.agent("agent-own").post("/v1/agents/lease", json=BIG).json()
    claims = tokens.verify("logs-secret-for-tests-0123456789abcdef", got["logs_token"], scope="logs")
    assert claims["job_id"] == "9301"


def test_forged_webhooks_cannot_hold_more_than_the_budget(control_factory: Callable[..., Control]) -> None:
    """Bodies with a made-up signature must be read to be checked: how many bytes of them are read at once is
    bounded; past it a delivery waits, then gets 503 (GitHub's deliveries can be redelivered)."""
    limit = 1024 * 1024
    control = control_factory(webhook_max_body_bytes=limit, webhook_max_inflight_bytes=limit, webhook_wait_seconds=0.5)
    head = (
        f"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {limit}\r\nX-GitHub-Event: workflow_job\r\n"
        f"X-GitHub-Delivery: forged\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", control.server.port)) as forged:
        forged.sendall(head.encode() + b"x" * (limit // 2))  # half a body, then nothing: the budget is all its
        budget = control.server.config.app.state.webhook_bodies
        for _ in range(300):  # until the server holds the forged body's room
            if budget.used:
                break
            time.sleep(0.01)
        assert budget.used == limit
        r = control.deliver(queued_payload(9401))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    # The forger hung up: room again.
    for _ in range(50):
        r = control.deliver(queued_payload(9401))
        if r.status_code != 503:
            break
        time.sleep(0.1)
    assert r.status_code == 202


def test_a_webhook_body_that_trickles_is_cut_off(control_factory: Callable[..., Control]) -> None:
    control = control_factory(webhook_body_timeout_seconds=1.0)
    head = (
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nX-GitHub-Event: workflow_job\r\n"
        f"X-GitHub-Delivery: slow\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", control.server.port)) as slow:
        slow.sendall(head.encode() + b"x")  # one byte of a thousand, then nothing
        slow.settimeout(15)
        answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert control.server.config.app.state.webhook_bodies.used == 0


def test_an_empty_agent_id_claim_does_not_fall_back_to_the_subject(control: Control) -> None:
    with control.client(forged_agent_token("", sub="agent-a")) as c:
        assert c.post("/v1/agents/heartbeat", json={"running": []}).status_code == 403
