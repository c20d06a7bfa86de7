"""End to end: webhook -> queue -> agent lease, with runner credentials from the GitHub App client over HTTP
against the fake GitHub API (both under uvicorn on loopback)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from smith.control.app import create_app
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.control.conftest import INSTALLATION, Control, github_app, make_settings, operator_token, queued_payload

LEASE = {"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 5}


@pytest.fixture
def github_and_control(redis_url: str) -> Iterator[tuple[FakeGitHub, Control]]:
    with github_app() as (fake, credentials):
        settings = make_settings(redis_url)
        with ThreadedServer(create_app(settings, credentials=credentials)) as srv:
            yield fake, Control(srv.url, settings, srv)


def test_a_leased_github_job_carries_a_jit_config(github_and_control: tuple[FakeGitHub, Control]) -> None:
    fake, control = github_and_control
    assert control.deliver(queued_payload(7001)).status_code == 202
    agent = control.agent("a1")
    r = agent.post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 200, r.text
    lease: dict[str, Any] = r.json()
    runner = lease["runner"]
    assert runner["kind"] == "jit"
    assert runner["url"] == "https://github.com/Codertocat/Hello-World"
    [registered] = fake.runners_in("repo:codertocat/hello-world")
    assert registered["name"] == runner["runner_name"]
    assert [label["name"] for label in registered["labels"]] == ["self-hosted", "smith-2vcpu"]
    files = json.loads(base64.b64decode(runner["value"]))  # GitHub's encoding: each runner file, base64
    assert json.loads(base64.b64decode(files[".runner"]))["agentId"] == registered["id"]
    assert [c.path for c in fake.token_requests()] == [f"/app/installations/{INSTALLATION}/access_tokens"]


def test_when_github_refuses_the_job_is_requeued_not_lost(github_and_control: tuple[FakeGitHub, Control]) -> None:
    fake, control = github_and_control
    fake.fail(404, times=1, message="Not Found", path="generate-jitconfig")
    control.deliver(queued_payload(7002))
    agent = control.agent("a1")
    r = agent.post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 503
    assert "re-queued" in r.json()["message"]
    with control.client(operator_token()) as c:
        job = c.get("/v1/jobs/7002").json()
    assert job["state"] == "queued"
    assert "Not Found" in job["reason"] and job["attempts"] == 0  # GitHub's failure cost the job no attempt
    r = agent.post("/v1/agents/lease", json=LEASE)  # nothing while GitHub rests (a second), then the job goes out
    while r.status_code == 204:
        r = agent.post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 200 and r.json()["runner"]["kind"] == "jit"


def test_a_cancelled_jobs_runner_is_removed_from_github(github_and_control: tuple[FakeGitHub, Control]) -> None:
    """An ephemeral runner whose job was cancelled never runs, so it would sit offline on GitHub: Smith removes it."""
    import time

    fake, control = github_and_control
    control.deliver(queued_payload(7003))
    agent = control.agent("a1")
    lease = agent.post("/v1/agents/lease", json=LEASE).json()
    assert [r["name"] for r in fake.runners_in("repo:codertocat/hello-world")] == [lease["runner"]["runner_name"]]
    r = agent.post("/v1/agents/jobs/7003/status", json={"state": "cancelled", "reason": "stopped"})
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while fake.runners_in("repo:codertocat/hello-world") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.runners_in("repo:codertocat/hello-world") == []


def test_a_succeeded_jobs_runner_is_left_alone(github_and_control: tuple[FakeGitHub, Control]) -> None:
    fake, control = github_and_control
    control.deliver(queued_payload(7004))
    agent = control.agent("a1")
    agent.post("/v1/agents/lease", json=LEASE)
    assert agent.post("/v1/agents/jobs/7004/status", json={"state": "succeeded", "exit_code": 0}).status_code == 200
    __import__("time").sleep(0.5)  # a release would run in the background: give it the chance to show
    assert not [c for c in fake.requests if c.method == "DELETE"]


def test_a_misconfigured_app_raises_an_alarm_operators_see(github_and_control: tuple[FakeGitHub, Control]) -> None:
    from tests.control.test_operator_cli import smith

    fake, control = github_and_control
    fake.fail(403, times=1, message="Resource not accessible by integration", path="generate-jitconfig")
    control.deliver(queued_payload(7009))
    agent = control.agent("a1")
    assert agent.post("/v1/agents/lease", json=LEASE).status_code == 503
    env = {"SMITH_CONTROL_URL": control.url, "SMITH_OPERATOR_TOKEN": operator_token()}
    code, out = smith("jobs", "status", "--json", env=env)
    alarm = json.loads(out)["github"]["alarm"]
    assert code == 0 and alarm["status"] == 403 and alarm["meaning"] == "missing permission"
    code, out = smith("jobs", "status", env=env)
    assert "GitHub refuses the App: 403 missing permission" in " ".join(out.split())
    r = agent.post("/v1/agents/lease", json=LEASE)
    while r.status_code == 204:  # the pause passes, GitHub answers: the alarm clears
        r = agent.post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 200
    code, out = smith("jobs", "status", "--json", env=env)
    assert json.loads(out)["github"]["alarm"] is None
