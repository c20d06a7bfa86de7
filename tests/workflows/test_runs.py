"""Built-in workflow runs on the real Valkey, without agents: a pull_request starts a run whose matrix job
becomes one Smith job per combination; results recorded by the leaseholder's report survive a control plane
that dies before advancing the run (a new one's sweep starts the next job with the outputs); a Smith job that
ends without a report (cancelled, reclaimed) fails its workflow job; the commit statuses follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from smith.adapters.redis import connect, keys
from smith.adapters.redis.jobs import RedisJobs
from smith.adapters.redis.wfruns import RedisRuns
from smith.control.wfrepos import RepoConfig
from smith.control.wftriggers import TriggerWorker
from smith.control.workflows import WorkflowRuns
from smith.domain.jobs import JobState, default_runner_classes
from smith.errors import NotFound
from smith.wire.agent import StatusReport
from tests.control.conftest import control_factory  # noqa: F401  (fixture)
from tests.workflows.test_platform import REPO, make_repo, pull_request_payload

MATRIX = """\
name: Matrix
on: pull_request
jobs:
  build:
    runs-on: [self-hosted, smith-2vcpu]
    strategy:
      matrix:
        os: [alpine, debian]
    outputs:
      artifact: ${{ steps.a.outputs.name }}
    steps:
      - id: a
        run: echo "name=app-${{ matrix.os }}" >> "$GITHUB_OUTPUT"
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ needs.build.outputs.artifact }}"
"""


class Statuses:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def commit_status(
        self, repo: str, sha: str, state: str, context: str, description: str, installation_id: int = 0
    ) -> None:
        self.posted.append((state, context, sha))


def plane(redis_url: str, repo: Path, statuses: Statuses) -> tuple[WorkflowRuns, RedisJobs]:
    """What one control plane process holds (a new one after a restart)."""
    r = connect.client(redis_url)
    jobs = RedisJobs(r)
    runs = WorkflowRuns(
        jobs, RedisRuns(r), default_runner_classes(), {REPO.lower(): RepoConfig(REPO, str(repo))}, statuses
    )
    return runs, jobs


async def trigger(wr: WorkflowRuns, event: str, delivery: str, payload: dict[str, Any]) -> list[str]:
    """A delivery recorded by the webhook, then turned into runs by the trigger worker: the runs' ids."""
    got = await wr.webhook(event, delivery, payload)
    assert got is not None and got["outcome"] == "triggered", got
    await TriggerWorker(wr, 1.0).drain()
    view = await wr.trigger_view(delivery)
    assert view["state"] == "done", view
    return list(view["runs"])


async def report(wr: WorkflowRuns, jobs: RedisJobs, job_id: str, agent: str, **req: Any) -> None:
    """What ControlPlane.report does for a workflow job's final report, minus the advance (the crash)."""
    lease = await jobs.lease(agent, [(await jobs.get(job_id)).runner_class], 1)
    assert lease is not None and lease.job.id == job_id
    await jobs.report(agent, job_id, JobState.RUNNING)
    await wr.finished(agent, await jobs.get(job_id), StatusReport.model_validate(req))
    await jobs.report(agent, job_id, JobState(req["state"]))


async def test_outputs_and_needs_survive_a_control_plane_that_died_before_advancing(
    redis_url: str, tmp_path: Path
) -> None:
    repo, base, head = make_repo(tmp_path, {"matrix.yml": MATRIX})
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    [run_id] = await trigger(wr, "pull_request", "d-1", pull_request_payload(3, base, head))
    view = await wr.view(run_id)
    builds = view["jobs"]["build"]["smith_jobs"]
    assert len(builds) == 2 and view["jobs"]["test"]["smith_jobs"] == []  # test waits for build
    specs = [await wr.spec_for(await jobs.get(b)) for b in builds]
    assert [(s.key, s.matrix) for s in specs if s] == [
        ("build (alpine)", {"os": "alpine"}),
        ("build (debian)", {"os": "debian"}),
    ]
    assert (await jobs.get(builds[0])).runner_class == "smith-2vcpu"
    for i, b in enumerate(builds):
        await report(
            wr, jobs, b, f"agent-{i}", state="succeeded", conclusion="success", outputs={"artifact": f"app-{i}"}
        )
    # The process died here, before advancing the run. A new control plane's sweep picks it up from Redis.
    wr2, jobs2 = plane(redis_url, repo, statuses)
    await wr2.sweep()
    view = await wr2.view(run_id)
    assert view["jobs"]["build"] == {**view["jobs"]["build"], "state": "done", "result": "success"}
    [test_id] = view["jobs"]["test"]["smith_jobs"]
    spec = await wr2.spec_for(await jobs2.get(test_id))
    assert spec is not None and spec.needs["build"]["result"] == "success"
    assert spec.needs["build"]["outputs"]["artifact"] in ("app-0", "app-1")
    assert (await jobs2.get(test_id)).runner_class == "self-hosted"  # ubuntu-latest: the repository's labels
    await wr2.sweep()  # again: nothing doubles
    assert (await wr2.view(run_id))["jobs"]["test"]["smith_jobs"] == [test_id]
    # The test job is cancelled before any agent reported on it: the run fails.
    await jobs2.cancel(test_id, "operator")
    await wr2.sweep()
    view = await wr2.view(run_id)
    assert view["state"] == "completed" and view["conclusion"] == "failure"
    assert view["jobs"]["test"]["result"] == "cancelled"
    assert statuses.posted == [("pending", "smith/Matrix", head), ("failure", "smith/Matrix", head)]
    raw = await jobs2.r.hget(keys.wf_run(run_id), "i:test:0")
    assert "operator" in orjson.loads(raw)["error"]  # the cancel's reason


async def test_a_redelivered_webhook_starts_no_second_run(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"matrix.yml": MATRIX})
    wr, _ = plane(redis_url, repo, Statuses())
    payload = pull_request_payload(3, base, head)
    first = await trigger(wr, "pull_request", "d-2", payload)
    again = await wr.webhook("pull_request", "d-2", payload)
    assert len(first) == 1 and again == {"outcome": "triggered", "delivery": "d-2", "new": False}
    assert await TriggerWorker(wr, 1.0).drain() == 0 and await trigger(wr, "pull_request", "d-2", payload) == first
    closed = await wr.webhook("pull_request", "d-3", pull_request_payload(3, base, head, action="closed"))
    assert closed == {"outcome": "ignored", "reason": "pull_request action 'closed'"}


PUSH = """\
name: Push
on:
  push:
    branches: [feature]
  workflow_dispatch:
    inputs:
      level:
        default: info
jobs:
  only:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ inputs.level }}"
"""

PUSH_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "github-webhooks" / "push" / "payload.json"


async def test_push_webhooks_start_runs_whose_filters_match(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"push.yml": PUSH})
    wr, _ = plane(redis_url, repo, Statuses())
    real = orjson.loads(PUSH_FIXTURE.read_bytes())  # GitHub's own delivery: a deleted tag
    assert real["repository"]["full_name"] == REPO
    assert await wr.webhook("push", "p-1", real) == {"outcome": "ignored", "reason": "a deleted ref runs nothing"}
    pushed = {**real, "ref": "refs/heads/feature", "before": base, "after": head, "deleted": False, "created": False}
    [run_id] = await trigger(wr, "push", "p-2", pushed)
    view = await wr.view(run_id)
    assert (view["event_name"], view["sha"], view["ref"]) == ("push", head, "refs/heads/feature")
    assert await trigger(wr, "push", "p-3", {**pushed, "ref": "refs/heads/main"}) == []  # branches: [feature]


async def test_workflow_dispatch_through_the_operator_api(redis_url: str, tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    from tests.control.conftest import operator_token

    repo, _, head = make_repo(tmp_path, {"push.yml": PUSH})
    config = tmp_path / "repos.yml"
    config.write_text(f"repositories:\n  - repository: {REPO}\n    source: {repo}\n    vars: {{REGION: eu}}\n")
    control = control_factory(workflow_repos=config)
    body = {
        "repository": REPO,
        "workflow": ".github/workflows/push.yml",
        "ref": "feature",
        "inputs": {"level": "debug"},
    }
    with control.client() as anonymous:
        assert anonymous.post("/v1/workflows/dispatch", json=body).status_code == 401
    with control.client(operator_token()) as c:
        r = c.post("/v1/workflows/dispatch", json=body)
        assert r.status_code == 201, r.text
        [run_id] = r.json()["runs"]
        run = c.get(f"/v1/workflows/runs/{run_id}").json()
        assert (run["event_name"], run["sha"], run["ref"]) == ("workflow_dispatch", head, "refs/heads/feature")
        [smith_id] = run["jobs"]["only"]["smith_jobs"]
        assert c.get(f"/v1/jobs/{smith_id}").json()["state"] == "queued"
        missing = c.post("/v1/workflows/dispatch", json={**body, "workflow": ".github/workflows/nope.yml"})
        assert missing.status_code == 400 and "no workflow_dispatch trigger" in missing.json()["message"]
        unknown = c.post("/v1/workflows/dispatch", json={**body, "repository": "octo/other"})
        assert unknown.status_code == 404


def strategy_workflow(fail_fast: bool, max_parallel: int) -> str:
    return f"""\
name: Strategy
on: pull_request
jobs:
  build:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: {str(fail_fast).lower()}
      max-parallel: {max_parallel}
      matrix:
        n: [1, 2, 3]
    steps:
      - run: echo ${{{{ matrix.n }}}}
"""


async def queued(jobs: RedisJobs, ids: list[str]) -> list[bool]:
    out = []
    for job_id in ids:
        try:
            out.append((await jobs.get(job_id)).state == JobState.QUEUED)
        except NotFound:
            out.append(False)
    return out


async def test_max_parallel_queues_instances_as_others_finish(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"s.yml": strategy_workflow(False, 2)})
    wr, jobs = plane(redis_url, repo, Statuses())
    [run_id] = await trigger(wr, "pull_request", "m-1", pull_request_payload(4, base, head))
    ids = (await wr.view(run_id))["jobs"]["build"]["smith_jobs"]
    assert await queued(jobs, ids) == [True, True, False]  # max-parallel: 2
    await report(wr, jobs, ids[0], "a-0", state="failed", conclusion="failure")
    await wr.sweep()
    assert await queued(jobs, ids) == [False, True, True]  # fail-fast off: the third one goes on


async def test_fail_fast_cancels_the_instances_not_run_yet(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"s.yml": strategy_workflow(True, 1)})
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    [run_id] = await trigger(wr, "pull_request", "f-1", pull_request_payload(5, base, head))
    ids = (await wr.view(run_id))["jobs"]["build"]["smith_jobs"]
    assert await queued(jobs, ids) == [True, False, False]
    await report(wr, jobs, ids[0], "a-0", state="failed", conclusion="failure")
    await wr.sweep()
    view = await wr.view(run_id)
    assert view["state"] == "completed" and view["jobs"]["build"]["result"] == "failure"
    assert await queued(jobs, ids) == [False, False, False]  # the others never ran
    assert [s[0] for s in statuses.posted] == ["pending", "failure"]


def test_smith_jobs_dispatch(tmp_path: Path, control_factory: Any) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from smith.cli import app
    from tests.control.conftest import operator_token

    repo, _, head = make_repo(tmp_path, {"push.yml": PUSH})
    config = tmp_path / "repos.json"
    config.write_text(orjson.dumps({"repositories": [{"repository": REPO, "source": str(repo)}]}).decode())
    control = control_factory(workflow_repos=config)
    env = {"SMITH_OPERATOR_TOKEN": operator_token()}
    args = ["jobs", "dispatch", REPO, ".github/workflows/push.yml", "--ref", "feature", "--url", control.url]
    res = CliRunner().invoke(app, [*args, "--input", "level=debug", "--json"], env=env)
    assert res.exit_code == 0, res.output
    out = res.stdout[res.stdout.index("{\n") :]  # (the in-process control plane logs to the same stdout)
    [run_id] = orjson.loads(out)["runs"]
    with control.client(operator_token()) as c:
        assert c.get(f"/v1/workflows/runs/{run_id}").json()["sha"] == head
    bad = CliRunner().invoke(app, [*args, "--input", "novalue"], env=env)
    assert bad.exit_code == 2 and "use KEY=VALUE" in bad.output
