"""A GitHub job's cache scope is settled at lease time from its workflow run (GitHub's runs API), so a fork's pull
request from a branch named ``main`` cannot write into ``main``'s scope. Jobs come from the fake GitHub's own
webhooks, tokens from real leases, saves and restores go through the real cache server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from smith import tokens
from smith.cache.auth import tenant_from_claims
from smith.control.app import create_app
from smith.domain.cache import Tenant
from smith.testing.github import FakeGitHub
from smith.testing.github_runs import WorkflowRun
from smith.testing.servers import ThreadedServer
from tests.cache.conftest import SECRET, client
from tests.cache.test_protocol import restore_v2, save_v2
from tests.control.conftest import WEBHOOK_SECRET, Control, github_app, make_settings

REPO = "Codertocat/Hello-World"  # where github_app() installs the App; its default branch is main
LABELS = ["self-hosted", "smith-2vcpu"]
LEASE = {"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 5}


class World:
    def __init__(self, fake: FakeGitHub, control: Control, cache: ThreadedServer) -> None:
        self.fake, self.control, self.cache = fake, control, cache
        self.agent = control.agent("a1")

    def token(self, run: WorkflowRun) -> str:
        """A job of ``run``, queued on GitHub, its webhook delivered, leased: its cache token."""
        job = self.fake.actions.queue_job(REPO, LABELS, run=run)
        self.fake.actions.wait_delivered()
        r = self.agent.post("/v1/agents/lease", json=LEASE)
        assert r.status_code == 200, r.text
        assert r.json()["job"]["id"] == str(job.id)
        return str(r.json()["cache"]["token"])

    def cache_client(self, token: str) -> Any:
        return client(self.cache, token)


def scope(token: str) -> Tenant:
    return tenant_from_claims(tokens.verify(SECRET, token, scope="cache"))


@pytest.fixture
def world(redis_url: str, serve: Any) -> Iterator[World]:
    cache = serve()
    with github_app() as (fake, credentials):
        settings = make_settings(redis_url, cache_url=cache.url, cache_shared_secret=SECRET)
        with ThreadedServer(create_app(settings, credentials=credentials)) as srv:
            fake.actions.deliver_to(srv.url + "/webhooks/github", WEBHOOK_SECRET)
            yield World(fake, Control(srv.url, settings, srv), cache)
            fake.actions.close()


def test_a_forks_pull_request_from_main_cannot_write_into_mains_scope(world: World) -> None:
    fork = world.fake.actions.start_run(
        REPO, event="pull_request", head_branch="main", head_repo="mallory/Hello-World", pull_number=7
    )
    evil = world.token(fork)
    assert scope(evil).write_scope == "refs/smith/forks/mallory/Hello-World/main"
    assert scope(evil).read_refs == ("refs/smith/forks/mallory/Hello-World/main", "refs/heads/main")
    save_v2(world.cache_client(evil), "deps", b"EVIL")  # before main ever saved it: the poisoning attempt
    save_v2(world.cache_client(evil), "fork-only", b"EVIL")

    main = world.token(world.fake.actions.start_run(REPO))  # a push to main
    assert scope(main).write_scope == "refs/heads/main"
    on_main = world.cache_client(main)
    assert restore_v2(on_main, "deps") is None  # read the fork's entry while it wrote main's head branch
    assert restore_v2(on_main, "fork-only") is None
    save_v2(on_main, "deps", b"from main")  # 409 already_exists while the fork held the key in main's scope
    assert restore_v2(on_main, "deps") == ("deps", b"from main")
    assert restore_v2(world.cache_client(evil), "deps") == ("deps", b"EVIL")  # the fork reads its own first
    next_fork_job = world.token(fork)
    assert restore_v2(world.cache_client(next_fork_job), "fork-only") == ("fork-only", b"EVIL")
    assert len(world.fake.calls("GET", f"/actions/runs/{fork.id}")) == 1  # the run is looked up once


def test_a_same_repository_pull_request_writes_its_merge_ref_and_reads_base_and_default(world: World) -> None:
    actions = world.fake.actions
    save_v2(world.cache_client(world.token(actions.start_run(REPO))), "deps", b"from main")
    save_v2(world.cache_client(world.token(actions.start_run(REPO, head_branch="dev"))), "tools", b"from dev")
    pr = actions.start_run(REPO, event="pull_request", head_branch="feature", pull_number=5, base_branch="dev")
    token = world.token(pr)
    assert scope(token).read_refs == ("refs/pull/5/merge", "refs/heads/dev", "refs/heads/main")
    on_pr = world.cache_client(token)
    assert restore_v2(on_pr, "deps") == ("deps", b"from main")
    assert restore_v2(on_pr, "tools") == ("tools", b"from dev")
    save_v2(on_pr, "pr-only", b"from the PR")
    main = world.cache_client(world.token(actions.start_run(REPO)))
    feature = world.cache_client(world.token(actions.start_run(REPO, head_branch="feature")))
    assert restore_v2(main, "pr-only") is None
    assert restore_v2(feature, "pr-only") is None  # the branch is not the pull request
    assert restore_v2(world.cache_client(world.token(pr)), "pr-only") == ("pr-only", b"from the PR")


def test_a_push_with_an_open_pull_request_still_writes_its_branch(world: World) -> None:
    """GitHub lists open pull requests sharing a push run's head: they do not make it a pull request's run."""
    push = world.fake.actions.start_run(REPO, head_branch="feature", pull_number=5, base_branch="main")
    assert scope(world.token(push)).write_scope == "refs/heads/feature"
    main = world.token(world.fake.actions.start_run(REPO))
    assert scope(main).write_scope == "refs/heads/main"


def test_when_github_cannot_say_the_job_writes_a_scope_of_its_runs_own(world: World) -> None:
    world.fake.server_errors(2, path="/actions/runs/")  # the App client's two attempts at the lookup
    fork = world.fake.actions.start_run(
        REPO, event="pull_request", head_branch="main", head_repo="mallory/Hello-World", pull_number=8
    )
    evil = world.token(fork)
    assert scope(evil).read_refs == (f"refs/smith/runs/{fork.id}", "refs/heads/main")  # reads as before
    save_v2(world.cache_client(evil), "deps", b"EVIL")
    main = world.cache_client(world.token(world.fake.actions.start_run(REPO)))
    assert restore_v2(main, "deps") is None
