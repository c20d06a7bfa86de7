"""The fake GitHub's jobs side behaves as GitHub does: any matching idle runner takes a queued job, webhooks go
out signed and in GitHub's order (or held and reordered), ephemeral runners leave after their job, a busy runner
cannot be deleted, JIT configs are encoded as GitHub encodes them."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smith import tokens
from smith.adapters.github import GitHubApp, GitHubError, RunnerScope
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer

APP_ID = "777"
REPO = "octo-org/app"
SECRET = "hook-secret"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Receiver:
    """Where the fake's webhooks land: checks each signature as the control plane does."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, str | None]] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        expected = tokens.github_signature(SECRET.encode(), body)
        assert request.headers["x-hub-signature-256"] == expected
        assert request.headers["x-github-event"] == "workflow_job"
        p = json.loads(body)
        self.got.append((p["action"], p["workflow_job"]["id"], p["workflow_job"]["runner_name"]))
        return Response(status_code=202)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with ThreadedServer(r.app) as srv:
        r.url = srv.url + "/hook"  # type: ignore[attr-defined]
        yield r


@pytest.fixture
async def world(key: rsa.RSAPrivateKey, receiver: Receiver) -> AsyncIterator[tuple[FakeGitHub, GitHubApp]]:
    fake = FakeGitHub(APP_ID, key.public_key())
    fake.add_installation(11, "octo-org", [REPO])
    fake.actions.deliver_to(receiver.url, SECRET)  # type: ignore[attr-defined]
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    client = GitHubApp(APP_ID, pem, transport=httpx.ASGITransport(app=fake.app))
    yield fake, client
    await client.aclose()
    fake.actions.close()
    assert fake.violations == []


SCOPE = RunnerScope("repo", REPO)


async def mint(client: GitHubApp, name: str, labels: list[str]) -> dict[str, Any]:
    jit = await client.generate_jit_config(SCOPE, 11, name=name, labels=labels)
    outer = json.loads(base64.b64decode(jit.encoded_jit_config))
    return {k: json.loads(base64.b64decode(v)) for k, v in outer.items()}


class Runner:
    """GitHub's runner's side of the protocol, in-process."""

    def __init__(self, fake: FakeGitHub, files: dict[str, Any]) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fake.app),
            base_url="http://fake",
            headers={"Authorization": f"Bearer {files['.credentials_rsaparams']['d']}"},
        )

    async def poll(self) -> dict[str, Any] | None:
        await self.http.post("/_actions/session")
        r = await self.http.get("/_actions/message", params={"wait": 0})
        return dict(r.json()) if r.status_code == 200 else None

    async def complete(self, job_id: int, result: str) -> None:
        r = await self.http.post(f"/_actions/jobs/{job_id}/complete", json={"result": result})
        assert r.status_code == 200, r.text


async def test_jit_config_is_encoded_as_github_encodes_it(world: tuple[FakeGitHub, GitHubApp]) -> None:
    _, client = world
    files = await mint(client, "smith-a", ["self-hosted"])
    assert set(files) == {".runner", ".credentials", ".credentials_rsaparams"}
    assert files[".runner"]["agentName"] == "smith-a" and files[".runner"]["ephemeral"] is True
    assert files[".runner"]["serverUrl"].endswith("/_actions")


async def test_a_job_goes_to_any_idle_runner_with_all_its_labels(
    world: tuple[FakeGitHub, GitHubApp], receiver: Receiver
) -> None:
    fake, client = world
    small = Runner(fake, await mint(client, "smith-small", ["self-hosted", "small"]))
    big = Runner(fake, await mint(client, "smith-big", ["self-hosted", "big", "extra"]))
    job = fake.actions.queue_job(REPO, ["self-hosted", "BIG"])
    assert await small.poll() is None  # lacks a label
    given = await big.poll()  # has them all (and more), whatever it was minted for
    assert given is not None and given["job_id"] == job.id
    [runner] = [r for r in fake.runners_in(f"repo:{REPO}") if r["name"] == "smith-big"]
    assert runner["busy"] and runner["status"] == "online"
    with pytest.raises(GitHubError) as busy:
        await client.remove_runner(SCOPE, 11, runner["id"])
    assert busy.value.status == 422
    await big.complete(job.id, "failed")
    assert fake.actions.job(job.id).conclusion == "failure"
    assert [r["name"] for r in fake.runners_in(f"repo:{REPO}")] == ["smith-small"]  # ephemeral: gone
    fake.actions.wait_delivered()
    assert receiver.got == [
        ("queued", job.id, None),
        ("in_progress", job.id, "smith-big"),
        ("completed", job.id, "smith-big"),
    ]


async def test_held_webhooks_can_arrive_out_of_order(world: tuple[FakeGitHub, GitHubApp], receiver: Receiver) -> None:
    fake, client = world
    runner = Runner(fake, await mint(client, "smith-r", ["self-hosted"]))
    fake.actions.hold()
    job = fake.actions.queue_job(REPO, ["self-hosted"])
    assert await runner.poll() is not None
    await runner.complete(job.id, "succeeded")
    fake.actions.flush(reverse=True)
    fake.actions.wait_delivered()
    assert [a for a, *_ in receiver.got] == ["completed", "in_progress", "queued"]


async def test_cancel_completes_a_queued_job_and_the_jobs_api_shows_it(world: tuple[FakeGitHub, GitHubApp]) -> None:
    fake, client = world
    job = fake.actions.queue_job(REPO, ["self-hosted"])
    seen = await client.workflow_job(REPO, job.id, 11)
    assert seen["status"] == "queued"
    fake.actions.cancel(job.id)
    seen = await client.workflow_job(REPO, job.id, 11)
    assert seen["status"] == "completed" and seen["conclusion"] == "cancelled"
