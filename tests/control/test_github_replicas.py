"""Two control-plane replicas on one Valkey share GitHub's state: the scopes runners were minted in (so any
replica's sweep, after any restart, covers them), and the pause and alarm a failed GitHub call raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis as sync_redis

from smith.adapters.github import GitHubApp
from smith.adapters.redis import keys
from smith.control.app import create_app
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.control.conftest import Control, github_app, make_settings, operator_token, queued_payload
from tests.control.test_github_sweep import names, until

LEASE = {"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 5}
QUICK = {**LEASE, "wait_seconds": 0.1}


class Replicas:
    def __init__(self, fake: FakeGitHub, credentials: GitHubApp, redis_url: str, stack: ExitStack) -> None:
        self.fake, self.redis_url, self.stack = fake, redis_url, stack
        self.api_url = str(credentials._http.base_url)
        self.pem = credentials._key

    def start(self, **overrides: Any) -> Control:
        """A replica with a GitHub App client of its own (nothing minted yet), as after a (re)start."""
        settings = make_settings(self.redis_url, deployment_id="blue", **overrides)
        creds = GitHubApp("4242", self.pem, api_url=self.api_url, web_url="https://github.com", max_attempts=2)
        srv = ThreadedServer(create_app(settings, credentials=creds))
        srv.start()
        self.stack.callback(srv.stop)
        return Control(srv.url, settings, srv)


@pytest.fixture
def replicas(redis_url: str) -> Iterator[Replicas]:
    with github_app() as (fake, credentials), ExitStack() as stack:
        yield Replicas(fake, credentials, redis_url, stack)


def queue(control: Control) -> dict[str, Any]:
    with control.client(operator_token()) as c:
        return dict(c.get("/v1/queue").json()["github"])


async def test_a_runner_minted_by_a_replica_that_went_away_is_swept_by_another(replicas: Replicas) -> None:
    a = replicas.start(github_runner_sweep_seconds=0)
    a.deliver(queued_payload(91, ["self-hosted"]))
    lease = a.agent("a1").post("/v1/agents/lease", json=LEASE)
    assert lease.status_code == 200 and lease.json()["runner"]["runner_name"] == "smith-blue-91-1"
    a.server.stop()  # the replica goes away; the lease then expires and the job is queued again
    stored = sync_redis.Redis.from_url(replicas.redis_url, decode_responses=True).hgetall(keys.GITHUB_SCOPES)
    assert stored == {"repo:Codertocat/Hello-World": "3456996"}
    b = replicas.start(github_runner_sweep_seconds=0.2)  # has minted nothing itself
    await until(lambda: "smith-blue-91-1" not in names(replicas.fake), "another replica's stale runner stayed")
    assert b.agent("a2").post("/v1/agents/lease", json=LEASE).json()["runner"]["runner_name"] == "smith-blue-91-2"


def test_a_pause_one_replica_starts_holds_every_replicas_leases(replicas: Replicas) -> None:
    a, b = replicas.start(github_runner_sweep_seconds=0), replicas.start(github_runner_sweep_seconds=0)
    replicas.fake.retry_after(600, path="generate-jitconfig")  # past what the client waits: RateLimited
    a.deliver(queued_payload(92, ["self-hosted"]))
    assert a.agent("a1").post("/v1/agents/lease", json=LEASE).status_code == 503
    minted = len(replicas.fake.calls("POST", "generate-jitconfig"))
    assert b.agent("a2").post("/v1/agents/lease", json=QUICK).status_code == 204  # job 92 is queued again
    assert len(replicas.fake.calls("POST", "generate-jitconfig")) == minted
    assert queue(b)["paused_seconds"] > 200 and queue(b)["alarm"] is None  # a rate limit raises no alarm


def test_an_alarm_one_replica_raises_every_replica_shows_and_any_clears(replicas: Replicas) -> None:
    a, b = replicas.start(github_runner_sweep_seconds=0), replicas.start(github_runner_sweep_seconds=0)
    replicas.fake.fail(403, message="Resource not accessible by integration", path="generate-jitconfig")
    a.deliver(queued_payload(93, ["self-hosted"]))
    assert a.agent("a1").post("/v1/agents/lease", json=LEASE).status_code == 503
    alarm = queue(b)["alarm"]
    assert alarm is not None and (alarm["status"], alarm["meaning"]) == (403, "missing permission")
    agent = b.agent("a2")
    r = agent.post("/v1/agents/lease", json=LEASE)
    while r.status_code == 204:  # the pause (a second) passes for B too; then B mints and GitHub answers
        r = agent.post("/v1/agents/lease", json=LEASE)
    assert r.status_code == 200
    assert queue(a) == {"alarm": None, "failures": 0, "paused_seconds": 0.0}
