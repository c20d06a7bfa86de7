"""Triggers: a push / pull_request webhook only records the delivery (no git in the request) and the control
plane's trigger worker turns it into runs. On the real Valkey: a control plane that dies after the webhook
answered (before its worker ran, or after the runs were created but before the trigger was settled) loses
nothing and starts each run exactly once; a git source that blocks does not hold the webhook's answer.
Pull requests run on their merge commit (base merged with head), made again identically by the agent."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import free_port
from smith.adapters.redis.jobs import RedisJobs
from smith.adapters.redis.wfruns import RedisRuns
from smith.control.wfrepos import RepoConfig
from smith.control.wftriggers import TriggerWorker
from smith.control.workflows import WorkflowRuns
from smith.domain.jobs import default_runner_classes
from smith.errors import InvalidInput, Unavailable
from smith.workflows import sources
from smith.workflows.errors import WorkflowError
from tests.control.conftest import (  # noqa: F401  (control_factory: a fixture)
    control_env,
    control_factory,
    operator_token,
    signed,
)
from tests.scrape import scrape, value
from tests.workflows.test_platform import REPO, git, make_repo, moved_on, pull_request_payload
from tests.workflows.test_runs import MATRIX, Statuses, plane

ONE_JOB = """\
name: One
on: [push, pull_request]
jobs:
  only:
    runs-on: ubuntu-latest
    steps:
      - run: cat VERSION BASE_NOTE
"""


async def run_ids(r: Any) -> list[str]:
    return sorted(k.removeprefix(keys.wf_run("")) for k in await r.keys(keys.wf_run("*")))


async def test_a_control_plane_that_died_after_the_webhook_answered_starts_the_run_once(
    redis_url: str, tmp_path: Path
) -> None:
    repo, base, head = make_repo(tmp_path, {"matrix.yml": MATRIX})
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    got = await wr.webhook("pull_request", "c-1", pull_request_payload(3, base, head))
    assert got == {"outcome": "triggered", "delivery": "c-1", "new": True}
    assert await run_ids(jobs.r) == []  # nothing was read or started in the request
    # The process died here, before its worker ran. The next control plane's worker starts the run.
    wr2, jobs2 = plane(redis_url, repo, statuses)
    assert await TriggerWorker(wr2, 1.0).drain() == 1
    [run_id] = await run_ids(jobs2.r)
    assert (await wr2.trigger_view("c-1"))["runs"] == [run_id] and (await wr2.trigger_view("c-1"))["state"] == "done"
    assert len((await wr2.view(run_id))["jobs"]["build"]["smith_jobs"]) == 2
    # Every later worker (the old one coming back, a redelivery) starts nothing more.
    assert await TriggerWorker(wr, 1.0).drain() == 0
    assert (await wr2.webhook("pull_request", "c-1", pull_request_payload(3, base, head)))["new"] is False  # type: ignore[index]
    assert await TriggerWorker(wr2, 1.0).drain() == 0
    assert await run_ids(jobs2.r) == [run_id]
    assert len(await jobs2.recent(limit=100)) == 2
    assert statuses.posted == [("pending", "smith/Matrix", head)]


async def test_a_crash_between_starting_the_runs_and_settling_the_trigger_starts_no_run_twice(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, base, head = make_repo(tmp_path, {"matrix.yml": MATRIX})
    wr, jobs = plane(redis_url, repo, Statuses())
    await wr.webhook("pull_request", "c-2", pull_request_payload(3, base, head))

    async def crash(*args: Any, **kwargs: Any) -> bool:
        raise Unavailable("the process died")

    monkeypatch.setattr(wr.runs, "trigger_done", crash)
    with pytest.raises(Unavailable):
        await TriggerWorker(wr, 1.0).drain()
    [run_id] = await run_ids(jobs.r)
    assert (await wr.trigger_view("c-2"))["state"] == "pending"  # still to do
    wr2, jobs2 = plane(redis_url, repo, Statuses())
    assert await TriggerWorker(wr2, 1.0).drain() == 1
    assert (await wr2.trigger_view("c-2"))["runs"] == [run_id]
    assert await run_ids(jobs2.r) == [run_id] and len(await jobs2.recent(limit=100)) == 2


async def test_two_workers_on_one_trigger_start_one_run(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"matrix.yml": MATRIX})
    (wr, jobs), (wr2, _) = plane(redis_url, repo, Statuses()), plane(redis_url, repo, Statuses())
    await wr.webhook("pull_request", "c-3", pull_request_payload(3, base, head))
    settled = await asyncio.gather(TriggerWorker(wr, 1.0).drain(), TriggerWorker(wr2, 1.0).drain())
    assert sorted(settled) == [0, 1]
    assert len(await run_ids(jobs.r)) == 1 and len(await jobs.recent(limit=100)) == 2


@contextlib.contextmanager
def blocking_git_server() -> Iterator[tuple[str, threading.Event]]:
    """A git:// URL whose server accepts connections and answers nothing until the event is set."""
    srv = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        srv.settimeout(0.2)
        while not release.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(srv.accept()[0])
        for s in held:  # hang up
            s.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"git://127.0.0.1:{srv.getsockname()[1]}/app.git", release
    finally:
        release.set()
        t.join()
        srv.close()


def repos_config(tmp_path: Path, source: str) -> Path:
    """SMITH_WORKFLOW_REPOS: the test repository at ``source``."""
    config = tmp_path / "repos.json"
    config.write_text(orjson.dumps({"repositories": [{"repository": REPO, "source": source}]}).decode())
    return config


def wait_for(get: Any, until: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if until(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_a_git_source_that_blocks_does_not_hold_the_webhook_answer(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    with blocking_git_server() as (url, release):
        control = control_factory(workflow_repos=repos_config(tmp_path, url))
        before = value(scrape(control.url), "smith_webhooks_received_total", event="pull_request")
        r = control.deliver(pull_request_payload(3, base, head), "pull_request", "b-1")
        assert r.status_code == 202, r.text
        assert value(scrape(control.url), "smith_webhooks_received_total", event="pull_request") == before + 1
        assert r.json()["outcome"] == "triggered"
        with control.client(operator_token()) as c:
            assert not release.is_set()  # answered while the source still holds git's connection
            assert c.get("/v1/workflows/triggers/b-1").json()["state"] == "pending"
            release.set()  # the server hangs up: git fails, and the trigger says why
            view = wait_for(lambda: c.get("/v1/workflows/triggers/b-1").json(), lambda v: v["state"] != "pending")
            assert view["state"] == "failed" and "cannot read" in view["error"], view
            assert c.get("/v1/workflows/triggers/nope").status_code == 404


@pytest.mark.slow
def test_a_control_plane_killed_after_the_webhook_answered_starts_the_run_once_after_a_restart(
    redis_url: str,
    tmp_path: Path,
    control_factory: Any,  # noqa: F811
) -> None:
    """A real process, SIGKILLed after its answer while its worker is still in git (the source blocks)."""
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    port = free_port()
    payload = pull_request_payload(3, base, head)
    with blocking_git_server() as (url, _):
        env = control_env(redis_url, tmp_path, SMITH_WORKFLOW_REPOS=str(repos_config(tmp_path, url)))
        server = subprocess.Popen([sys.executable, "-m", "smith", "control", "serve", "--port", str(port)], env=env)
        try:
            up = wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), bool, timeout=120)
            assert up, "the control plane did not start"
            body = orjson.dumps(payload)
            r = httpx.post(
                f"http://127.0.0.1:{port}/webhooks/github", content=body, headers=signed(body, "pull_request", "k-9")
            )
            assert r.status_code == 202 and r.json()["outcome"] == "triggered", r.text
        finally:
            server.kill()  # SIGKILL: its worker was in git, no run was started
            server.wait(30)
    # The source is reachable now; a new control plane (same Valkey) starts the run, once.
    control = control_factory(workflow_repos=repos_config(tmp_path, str(repo)))
    with control.client(operator_token()) as c:
        view = wait_for(lambda: c.get("/v1/workflows/triggers/k-9").json(), lambda v: v["state"] != "pending")
        assert view["state"] == "done" and len(view["runs"]) == 1, view
        again = control.deliver(payload, "pull_request", "k-9")  # GitHub redelivers the same delivery
        assert again.json()["outcome"] == "duplicate"
    keys_now = asyncio.run(_run_keys(redis_url))
    assert keys_now == view["runs"]


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz").status_code == 200
    except httpx.HTTPError:
        return False


async def _run_keys(redis_url: str) -> list[str]:
    r = connect.client(redis_url)
    try:
        return await run_ids(r)
    finally:
        await r.aclose()


def test_a_control_plane_stops_at_once_while_git_hangs(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    """Its worker's git is killed, and the trigger stays pending for the next control plane."""
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    with blocking_git_server() as (url, release):
        control = control_factory(workflow_repos=repos_config(tmp_path, url))
        assert control.deliver(pull_request_payload(3, base, head), "pull_request", "h-1").status_code == 202
        with control.client(operator_token()) as c:
            assert c.get("/v1/workflows/triggers/h-1").json()["state"] == "pending"
        control.server.stop()  # raises if the server's loop is still waiting for git
        assert not release.is_set()
        held = asyncio.run(_trigger_state(control.settings.redis_url, "h-1"))
        assert held == "pending"


async def _trigger_state(redis_url: str, delivery: str) -> str:
    r = connect.client(redis_url)
    try:
        return str(await r.hget(keys.wf_trigger(delivery), "state"))
    finally:
        await r.aclose()


def test_a_blocked_source_holds_up_only_its_own_trigger(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    with blocking_git_server() as (url, release):
        config = tmp_path / "repos.json"
        repos = [{"repository": REPO, "source": url}, {"repository": "Codertocat/Other", "source": str(repo)}]
        config.write_text(orjson.dumps({"repositories": repos}).decode())
        control = control_factory(workflow_repos=config)
        blocked = pull_request_payload(3, base, head)
        other = pull_request_payload(4, base, head)
        other["repository"] = {**other["repository"], "full_name": "Codertocat/Other", "name": "Other"}
        assert control.deliver(blocked, "pull_request", "s-1").status_code == 202
        assert control.deliver(other, "pull_request", "s-2").status_code == 202
        with control.client(operator_token()) as c:
            done = wait_for(lambda: c.get("/v1/workflows/triggers/s-2").json(), lambda v: v["state"] != "pending")
            assert done["state"] == "done" and len(done["runs"]) == 1, done
            assert not release.is_set() and c.get("/v1/workflows/triggers/s-1").json()["state"] == "pending"
            release.set()
            wait_for(lambda: c.get("/v1/workflows/triggers/s-1").json(), lambda v: v["state"] != "pending")


def test_a_git_source_that_never_answers_fails_its_trigger_after_the_configured_git_timeout(
    tmp_path: Path,
    control_factory: Any,  # noqa: F811
) -> None:
    """SMITH_WORKFLOW_GIT_TIMEOUT_SECONDS reaches the worker's git: the trigger fails then, saying why, while the
    source still holds the connection (before, git had 300 s)."""
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    with blocking_git_server() as (url, release):
        control = control_factory(workflow_repos=repos_config(tmp_path, url), workflow_git_timeout_seconds=2)
        assert control.deliver(pull_request_payload(3, base, head), "pull_request", "g-1").status_code == 202
        with control.client(operator_token()) as c:
            view = wait_for(lambda: c.get("/v1/workflows/triggers/g-1").json(), lambda v: v["state"] != "pending")
        assert not release.is_set()
        assert view["state"] == "failed" and "git clone timed out after 2 s" in view["error"], view


async def test_a_git_timeout_frees_the_trigger_worker_slot(redis_url: str, tmp_path: Path) -> None:
    """A worker with one slot: the trigger whose source never answers fails after the git timeout, and the
    trigger waiting behind it then runs."""
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    other = pull_request_payload(4, base, head)
    other["repository"] = {**other["repository"], "full_name": "Codertocat/Other", "name": "Other"}
    with blocking_git_server() as (url, release):
        r = connect.client(redis_url)
        repos = {REPO.lower(): RepoConfig(REPO, url), "codertocat/other": RepoConfig("Codertocat/Other", str(repo))}
        wr = WorkflowRuns(RedisJobs(r), RedisRuns(r), default_runner_classes(), repos, Statuses(), git_timeout=2)
        worker = TriggerWorker(wr, 60.0, parallel=1)
        await wr.webhook("pull_request", "f-1", pull_request_payload(3, base, head))
        serving = asyncio.create_task(worker.serve())
        try:
            assert await until(lambda: "f-1" in worker._working)  # the one slot is held by git
            await wr.webhook("pull_request", "f-2", other)
            assert await until(lambda: "f-1" not in worker._working and "f-2" not in worker._working)
            first, second = await wr.trigger_view("f-1"), await wr.trigger_view("f-2")
            assert first["state"] == "failed" and "git clone timed out after 2 s" in first["error"], first
            assert second["state"] == "done" and len(second["runs"]) == 1, second
            assert not release.is_set()  # the source never answered
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await r.aclose()


def test_git_gives_up_by_itself_on_an_http_source_that_sends_nothing() -> None:
    """Over http(s) git's own low-speed limit (half the timeout here) ends the clone, with git's reason, before
    the timeout would kill it."""

    def read(url: str) -> Any:
        sources.TIMEOUT.set(6)  # this context only: git would be killed after 6 s, its low-speed limit is 3 s
        return sources.read_event(url, "push", {}, "0" * 40, None)

    with blocking_git_server() as (url, release):
        with pytest.raises(WorkflowError, match="Operation too slow") as err:
            contextvars.copy_context().run(read, url.replace("git://", "http://"))
        assert "timed out" not in err.value.message and not release.is_set()


async def until(check: Any, timeout: float = 60) -> bool:
    """Whether ``check()`` came true within ``timeout`` (the event loop going on meanwhile)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return bool(check())


async def test_a_pull_request_runs_on_its_merge_commit(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = moved_on(tmp_path, {"one.yml": ONE_JOB})
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    await wr.webhook("pull_request", "m-1", pull_request_payload(12, base, head))
    await TriggerWorker(wr, 1.0).drain()
    [run_id] = (await wr.trigger_view("m-1"))["runs"]
    view = await wr.view(run_id)
    merge = view["sha"]
    assert view["ref"] == "refs/pull/12/merge" and merge not in (base, head)
    [smith_id] = view["jobs"]["only"]["smith_jobs"]
    spec = await wr.spec_for(await jobs.get(smith_id))
    assert spec is not None and (spec.sha, spec.merge_base, spec.merge_head) == (merge, base, head)
    assert (await jobs.get(smith_id)).head_sha == head
    assert statuses.posted == [("pending", "smith/One", head)]  # statuses go on the PR's head commit
    # The agent makes the same commit from the spec: both parents' files, GitHub's parent order.
    out = sources.checkout(str(repo), merge, tmp_path / "co", (spec.merge_base, spec.merge_head, spec.merge_time))
    assert (out / "VERSION").read_text() == "1.2.3\n" and (out / "BASE_NOTE").read_text() == "from main\n"
    assert git(out, "rev-parse", "HEAD^1", "HEAD^2").split() == [base, head]
    with pytest.raises(sources.WorkflowError, match="is not the run's"):
        sources.checkout(str(repo), merge, tmp_path / "co2", (base, head, spec.merge_time + 1))
    # The source itself was not written to (the merge was made in a scratch clone).
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "cat-file", "-e", merge)


async def test_a_pull_request_from_a_fork_is_fetched_from_its_pull_ref(redis_url: str, tmp_path: Path) -> None:
    """Its head is in no branch of the base repository, only at refs/pull/N/head; the source is a URL (file://,
    git's network transport: a clone copies the branches and tags, nothing else)."""
    repo, base, head = moved_on(tmp_path, {"one.yml": ONE_JOB})
    git(repo, "update-ref", "refs/pull/21/head", head)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-qD", "feature")
    url = f"file://{repo}"
    wr, jobs = plane(redis_url, repo, Statuses())
    wr.repos[REPO.lower()] = RepoConfig(REPO, url)
    await wr.webhook("pull_request", "f-1", pull_request_payload(21, base, head))
    assert await TriggerWorker(wr, 1.0).drain() == 1
    view = await wr.trigger_view("f-1")
    assert view["state"] == "done", view
    [run_id] = view["runs"]
    [smith_id] = (await wr.view(run_id))["jobs"]["only"]["smith_jobs"]
    spec = await wr.spec_for(await jobs.get(smith_id))
    assert spec is not None and spec.source == url
    merge = (spec.merge_base, spec.merge_head, spec.merge_time)
    out = await asyncio.to_thread(sources.checkout, url, spec.sha, tmp_path / "co", merge, "refs/pull/21/head")
    assert (out / "VERSION").read_text() == "1.2.3\n" and (out / "BASE_NOTE").read_text() == "from main\n"


async def test_a_conflicting_pull_request_runs_nothing_and_says_why(redis_url: str, tmp_path: Path) -> None:
    repo, _, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    git(repo, "checkout", "-q", "main")
    (repo / "VERSION").write_text("9.9.9\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main has another version")
    base = git(repo, "rev-parse", "HEAD")
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    await wr.webhook("pull_request", "x-1", pull_request_payload(13, base, head))
    assert await TriggerWorker(wr, 1.0).drain() == 1
    view = await wr.trigger_view("x-1")
    assert view["state"] == "failed" and view["runs"] == [] and "merge conflict in VERSION" in view["error"]
    assert await run_ids(jobs.r) == []
    assert statuses.posted == [("failure", "smith/merge", head)]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("head", "--upload-pack=touch /tmp/smith-pwned"),
        ("head", "HEAD~1"),
        ("base", "-c core.sshCommand=x"),
        ("number", "1/head:refs/heads/main --force"),
        ("number", 0),
    ],
)
async def test_a_payload_naming_no_real_commit_or_ref_reaches_no_git(
    redis_url: str, tmp_path: Path, where: str, value: Any
) -> None:
    """Only commit ids and refs of the usual shapes reach git's command line: an option or a revision expression in
    a (signed) payload is refused at the webhook, and nothing is recorded for the worker."""
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    wr, jobs = plane(redis_url, repo, Statuses())
    payload = pull_request_payload(4, base, head)
    if where == "number":
        payload["number"] = payload["pull_request"]["number"] = value
    else:
        payload["pull_request"][where]["sha"] = value
    with pytest.raises(InvalidInput):
        await wr.webhook("pull_request", "bad-1", payload)
    assert await TriggerWorker(wr, 1.0).drain() == 0 and await run_ids(jobs.r) == []
    good = await wr.webhook("pull_request", "good-1", pull_request_payload(4, base, head))
    assert good is not None and good["outcome"] == "triggered"


async def test_a_push_to_a_ref_that_is_no_branch_or_tag_is_refused(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"one.yml": ONE_JOB})
    wr, _ = plane(redis_url, repo, Statuses())
    payload = {
        "ref": "--mirror",
        "after": head,
        "before": base,
        "repository": pull_request_payload(1, base, head)["repository"],
    }
    with pytest.raises(InvalidInput):
        await wr.webhook("push", "bad-push", payload)
