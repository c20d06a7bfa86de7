"""Leases over the agent API against a real Valkey: exactly-once hand-over, reclaim, retries, restarts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from smith.adapters.redis.embedded import EmbeddedRedis, free_port
from tests.control.conftest import Control, agent_token, operator_token, queued_payload

BIG = {"free_vcpus": 64, "free_memory_mib": 262144}


def lease(agent: httpx.Client, wait: float = 0.5) -> dict | None:
    r = agent.post("/v1/agents/lease", json={**BIG, "wait_seconds": wait})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def report(agent: httpx.Client, job_id: str, state: str, **extra: object) -> httpx.Response:
    return agent.post(f"/v1/agents/jobs/{job_id}/status", json={"state": state, **extra})


def job(control: Control, job_id: str) -> dict:
    with control.client(operator_token()) as c:
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()


def test_lease_run_succeed(control: Control) -> None:
    control.deliver(queued_payload(2001))
    a = control.agent("agent-a")
    got = lease(a)
    assert got is not None
    assert got["job"]["id"] == "2001" and got["job"]["runner_class"] == "smith-2vcpu"
    assert job(control, "2001")["state"] == "assigned"
    assert report(a, "2001", "running").status_code == 200
    r = report(a, "2001", "succeeded", exit_code=0)
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    final = job(control, "2001")
    assert final["exit_code"] == 0 and final["agent_id"] == "agent-a"
    assert final["created_at"] <= final["assigned_at"] <= final["started_at"] <= final["finished_at"]
    # Nothing is left in flight.
    with control.client(operator_token()) as c:
        assert c.get("/v1/queue").json()["leases_in_flight"] == 0
    # A finished job cannot be reported again.
    assert report(a, "2001", "failed").status_code == 409


def test_long_poll_hands_over_a_job_queued_while_waiting(control: Control) -> None:
    a = control.agent("agent-wait")
    result: dict = {}

    def wait() -> None:
        started = time.monotonic()
        result["lease"] = lease(a, wait=20)
        result["waited"] = time.monotonic() - started

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    control.deliver(queued_payload(2002))
    t.join(25)
    assert result["lease"] is not None and result["lease"]["job"]["id"] == "2002"
    assert result["waited"] < 20  # it did not sit out the whole wait


def test_long_poll_outlasts_the_redis_socket_timeout(control_factory: Callable[..., Control]) -> None:
    """A wait longer than the Redis client's reply timeout is still one clean long-poll (204, then a job)."""
    control = control_factory(redis_timeout_seconds=0.3)
    a = control.agent("agent-patient")
    assert a.post("/v1/agents/lease", json={**BIG, "wait_seconds": 1.0}).status_code == 204
    control.deliver(queued_payload(2010))
    r = a.post("/v1/agents/lease", json={**BIG, "wait_seconds": 1.0})
    assert r.status_code == 200 and r.json()["job"]["id"] == "2010"


def test_job_only_goes_to_a_host_with_room(control: Control) -> None:
    control.deliver(queued_payload(2003, ["self-hosted", "smith-4vcpu"]))
    small = control.agent("small")
    r = small.post("/v1/agents/lease", json={"free_vcpus": 2, "free_memory_mib": 4096, "wait_seconds": 0.3})
    assert r.status_code == 204
    r = small.post("/v1/agents/lease", json={"free_vcpus": 4, "free_memory_mib": 8192, "wait_seconds": 0.3})
    assert r.status_code == 200 and r.json()["job"]["id"] == "2003"


def test_host_labels_restrict_classes(control: Control) -> None:
    control.deliver(queued_payload(2004, ["self-hosted", "smith-2vcpu"]))
    only4 = control.agent("only4", labels=["smith-4vcpu"])
    assert lease(only4, 0.3) is None
    any_ = control.agent("any")
    assert lease(any_, 0.3)["job"]["id"] == "2004"


def test_agent_auth(control: Control) -> None:
    body = {"hostname": "h", "vcpus": 1, "memory_mib": 1, "max_vms": 1}
    with control.client() as c:
        assert c.post("/v1/agents/register", json=body).status_code == 401
    with control.client("not-a-jwt") as c:
        assert c.post("/v1/agents/register", json=body).status_code == 401
    with control.client(agent_token("x", ttl=1, now=time.time() - 60)) as c:  # expired, well past the leeway
        r = c.post("/v1/agents/register", json=body)
        assert r.status_code == 401 and "expired" in r.json()["message"]
    with control.client(operator_token()) as c:  # right signature secret? no: wrong scope and secret
        assert c.post("/v1/agents/register", json=body).status_code == 401
    with control.client(agent_token("x")) as c:  # agent token on the operator API
        assert c.get("/v1/jobs").status_code == 401


def test_heartbeat_renews_and_expiry_requeues_to_another_agent(control: Control) -> None:
    control.deliver(queued_payload(2005))
    a = control.agent("agent-a")
    b = control.agent("agent-b")
    got = lease(a)
    assert got["job"]["id"] == "2005"
    report(a, "2005", "running")
    # While A heartbeats, its lease holds beyond the 2 s TTL.
    for _ in range(6):
        hb = a.post("/v1/agents/heartbeat", json={"running": ["2005"]})
        assert hb.json()["jobs"] == {"2005": "ok"}
        time.sleep(0.5)
    assert job(control, "2005")["state"] == "running"
    assert lease(b, 0.2) is None
    # A is "killed": no more heartbeats. The reaper puts the job back and B completes it.
    got_b = lease(b, wait=15)
    assert got_b is not None and got_b["job"]["id"] == "2005"
    assert got_b["job"]["attempt"] == 2
    assert report(b, "2005", "succeeded", exit_code=0).status_code == 200
    # A comes back from the dead: its report and heartbeat are refused, the job stays B's.
    assert report(a, "2005", "failed").status_code == 409
    assert a.post("/v1/agents/heartbeat", json={"running": ["2005"]}).json()["jobs"] == {"2005": "lost"}
    final = job(control, "2005")
    assert final["state"] == "succeeded" and final["agent_id"] == "agent-b" and final["attempts"] == 2


def test_restarted_agent_releases_its_leases_at_once(control_factory: object) -> None:
    control: Control = control_factory(lease_ttl_seconds=300)  # type: ignore[operator]
    control.deliver(queued_payload(2006))
    a = control.agent("agent-a")
    assert lease(a)["job"]["id"] == "2006"
    control.agent("agent-a")  # the agent process restarted and registers again
    j = job(control, "2006")
    assert j["state"] == "queued" and "restarted" in j["reason"]
    b = control.agent("agent-b")
    assert lease(b)["job"]["id"] == "2006"


def test_gives_up_after_max_attempts(control_factory: object) -> None:
    control: Control = control_factory(lease_ttl_seconds=0.5, max_attempts=2)  # type: ignore[operator]
    control.deliver(queued_payload(2007))
    a = control.agent("flaky")
    for _ in range(2):
        assert lease(a, wait=10)["job"]["id"] == "2007"
    deadline = time.monotonic() + 10
    while job(control, "2007")["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    j = job(control, "2007")
    assert j["state"] == "failed" and "gave up after 2 attempts" in j["reason"]
    assert lease(a, 0.8) is None


def test_cancel_queued_and_running(control: Control) -> None:
    control.deliver(queued_payload(2008))
    control.deliver(queued_payload(2009))
    with control.client(operator_token()) as op:
        r = op.post("/v1/jobs/2008/cancel", json={"reason": "not needed"})
        assert r.json()["outcome"] == "cancelled" and r.json()["job"]["state"] == "cancelled"
        a = control.agent("a")
        got = lease(a)
        assert got["job"]["id"] == "2009"  # the cancelled one never reaches an agent
        report(a, "2009", "running")
        assert op.post("/v1/jobs/2009/cancel").json()["outcome"] == "cancel_requested"
        assert a.post("/v1/agents/heartbeat", json={"running": ["2009"]}).json()["jobs"] == {"2009": "cancel"}
        assert report(a, "2009", "cancelled", reason="stopped by agent").status_code == 200
        assert op.post("/v1/jobs/2009/cancel").status_code == 409
        assert op.post("/v1/jobs/nope/cancel").status_code == 404


@pytest.mark.slow
def test_two_agents_compete_for_1000_jobs_each_leased_once(control: Control) -> None:
    n = 1000
    with httpx.Client() as c:
        for i in range(n):
            body = queued_payload(100_000 + i)
            import orjson

            from tests.control.conftest import signed

            raw = orjson.dumps(body)
            assert c.post(control.url + "/webhooks/github", content=raw, headers=signed(raw)).status_code == 202
    leased: Counter[str] = Counter()
    lock = threading.Lock()

    def work(name: str) -> None:
        agent = control.agent(name)
        idle = 0
        while idle < 3:
            got = lease(agent, wait=0.3)
            if got is None:
                idle += 1
                continue
            jid = got["job"]["id"]
            with lock:
                leased[jid] += 1
            assert report(agent, jid, "succeeded", exit_code=0).status_code == 200

    threads = [threading.Thread(target=work, args=(f"racer-{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(leased) == n
    assert set(leased.values()) == {1}
    with control.client(operator_token()) as op:
        health = op.get("/v1/queue").json()
        assert health["queued_total"] == 0 and health["leases_in_flight"] == 0
        done = op.get("/v1/jobs", params={"state": "succeeded", "limit": 1000}).json()
        assert len(done) == n


@pytest.mark.slow
@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_redis_restart_between_webhook_and_lease_loses_nothing(
    tmp_path: Path, control_factory: object, how: str
) -> None:
    server = EmbeddedRedis(tmp_path / "valkey", port=free_port(), fsync="always")
    server.start()
    try:
        control: Control = control_factory(redis_url=server.url)  # type: ignore[operator]
        ids = [str(3000 + i) for i in range(50)]
        with ThreadPoolExecutor(16) as pool:  # at once, so they share writes: each 202 still means on disk
            answers = list(pool.map(lambda jid: control.deliver(queued_payload(int(jid))), ids))
        assert all(r.status_code == 202 and r.json()["outcome"] == "queued" for r in answers)
        server.stop() if how == "graceful" else server.kill()
        # While Redis is down, the control plane says so instead of pretending.
        a = httpx.Client(base_url=control.url, headers={"Authorization": f"Bearer {agent_token('a')}"})
        assert (
            a.post(
                "/v1/agents/register", json={"hostname": "a", "vcpus": 64, "memory_mib": 262144, "max_vms": 64}
            ).status_code
            == 503
        )
        assert httpx.get(control.url + "/readyz").status_code == 503
        # Webhooks that arrive meanwhile are spooled to disk and answered 202: GitHub would not retry a 503.
        late = [str(3100 + i) for i in range(5)]
        for jid in late:
            r = control.deliver(queued_payload(int(jid)))
            assert r.status_code == 202 and r.json()["outcome"] == "spooled"
        server.start()
        agent = control.agent("a")
        got = set()
        while (g := lease(agent, wait=2)) is not None:
            got.add(g["job"]["id"])
            report(agent, g["job"]["id"], "succeeded", exit_code=0)
        assert got == set(ids) | set(late)
        assert httpx.get(control.url + "/readyz").status_code == 200
    finally:
        server.stop()
