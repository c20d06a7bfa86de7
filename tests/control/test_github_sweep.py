"""Runner cleanup: the sweep removes this deployment's offline idle runners that no live lease waits for, and
never another deployment's (two deployments on one organisation); the 409 path never deletes a busy runner;
runner groups are sent only at organisation scope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smith.adapters.github import GitHubApp, GitHubError, RunnerScope
from smith.control.app import create_app
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.control.conftest import APP_ID, INSTALLATION, Control, make_settings, queued_payload

REPO = "Codertocat/Hello-World"
SCOPE = RunnerScope.repo(REPO)
LEASE = {"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 5}


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fake = FakeGitHub(APP_ID, key.public_key())
    fake.add_installation(INSTALLATION, "Codertocat", [REPO], account_type="User")
    with ThreadedServer(fake.app) as gh:
        yield fake, gh.url, pem
    assert fake.violations == []


def client(url: str, pem: str) -> GitHubApp:
    return GitHubApp(APP_ID, pem, api_url=url, web_url="https://github.com", max_attempts=2)


async def until(what: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + 20
    while not what():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


def names(fake: FakeGitHub) -> set[str]:
    return {r["name"] for r in fake.runners_in("repo:codertocat/hello-world")}


async def test_the_sweep_removes_only_this_deployments_stale_runners(
    github: tuple[FakeGitHub, str, str], redis_url: str
) -> None:
    fake, url, pem = github
    other = client(url, pem)  # another deployment ("green") and leftovers of this one ("blue")
    for name in ("smith-green-77-1", "smith-blue-78-1", "smith-blue-80-1", "smith-77-1", "someone-elses"):
        await other.generate_jit_config(SCOPE, INSTALLATION, name=name, labels=["self-hosted"])
    [busy] = [r for r in fake.runners_in("repo:codertocat/hello-world") if r["name"] == "smith-blue-80-1"]
    busy["busy"], busy["status"] = True, "online"
    await other.aclose()
    settings = make_settings(redis_url, deployment_id="blue", github_runner_sweep_seconds=0.2)
    with ThreadedServer(create_app(settings, credentials=client(url, pem))) as srv:
        control = Control(srv.url, settings, srv)
        control.deliver(queued_payload(79, ["self-hosted"]))
        agent = control.agent("a1")
        lease = agent.post("/v1/agents/lease", json=LEASE)  # mints smith-blue-79-1; its VM "boots": offline
        assert lease.status_code == 200 and lease.json()["runner"]["runner_name"] == "smith-blue-79-1"
        await until(lambda: "smith-blue-78-1" not in names(fake), "the stale runner was never swept")
        sweeps = len(fake.calls("GET", "/actions/runners"))
        await until(lambda: len(fake.calls("GET", "/actions/runners")) >= sweeps + 3, "no more sweeps")
        assert names(fake) == {"smith-green-77-1", "smith-blue-79-1", "smith-blue-80-1", "smith-77-1", "someone-elses"}
        assert not [c for c in fake.calls("DELETE") if c.status == 422]  # a busy runner is not even tried


async def test_a_same_named_busy_runner_is_never_deleted(github: tuple[FakeGitHub, str, str]) -> None:
    fake, url, pem = github
    c = client(url, pem)
    await c.generate_jit_config(SCOPE, INSTALLATION, name="smith-blue-5-1", labels=["self-hosted"])
    fake.runners_in("repo:codertocat/hello-world")[0]["busy"] = True
    with pytest.raises(GitHubError) as refused:
        await c.generate_jit_config(SCOPE, INSTALLATION, name="smith-blue-5-1", labels=["self-hosted"])
    assert refused.value.status == 409 and refused.value.retryable
    assert names(fake) == {"smith-blue-5-1"} and not fake.calls("DELETE")
    await c.aclose()


async def test_the_runner_group_is_sent_only_at_organisation_scope(github: tuple[FakeGitHub, str, str]) -> None:
    fake, url, pem = github
    fake.runner_groups.add(7)
    c = GitHubApp(APP_ID, pem, api_url=url, runner_group_id=7)
    await c.generate_jit_config(SCOPE, INSTALLATION, name="r1", labels=["self-hosted"])
    await c.generate_jit_config(RunnerScope.org("Codertocat"), INSTALLATION, name="r2", labels=["self-hosted"])
    repo_call, org_call = fake.calls("POST", "generate-jitconfig")
    assert repo_call.body["runner_group_id"] == 1 and org_call.body["runner_group_id"] == 7
    await c.aclose()
