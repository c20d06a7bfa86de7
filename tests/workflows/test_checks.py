"""Each job of a built-in workflow run is a GitHub check run "<workflow> / <job>" (queued -> in_progress ->
completed with its conclusion), through the real GitHub App client against the fake GitHub (which checks every
body against GitHub's description); an App without the checks permission (403) gets commit statuses instead.
Real Valkey; the agents' reports are made by hand (as test_runs.py does)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smith.adapters.github import GitHubApp
from smith.adapters.redis import connect
from smith.adapters.redis.jobs import RedisJobs
from smith.adapters.redis.wfruns import RedisRuns
from smith.control.wfchecks import RETRY_CHECKS_AFTER
from smith.control.wfrepos import RepoConfig
from smith.control.wftriggers import TriggerWorker
from smith.control.workflows import WorkflowRuns
from smith.domain.jobs import JobState, default_runner_classes
from smith.testing.github import FakeGitHub
from smith.wire.agent import StatusReport
from tests.control.conftest import INSTALLATION, github_app
from tests.workflows.test_platform import REPO, make_repo, pull_request_payload

CI = """\
name: CI
on: pull_request
jobs:
  build:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        os: [alpine, debian]
    steps:
      - run: echo ${{ matrix.os }}
"""


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, GitHubApp]]:
    with github_app() as pair:
        yield pair


async def start(
    redis_url: str, tmp_path: Path, client: GitHubApp, clock: Callable[[], float] = time.monotonic
) -> tuple[WorkflowRuns, RedisJobs, list[str]]:
    repo, base, head = make_repo(tmp_path, {"ci.yml": CI})
    r = connect.client(redis_url)
    jobs = RedisJobs(r)
    wr = WorkflowRuns(jobs, RedisRuns(r), default_runner_classes(), {REPO.lower(): RepoConfig(REPO, str(repo))}, client)
    wr.checks.clock = clock
    await wr.webhook("pull_request", "k-1", pull_request_payload(5, base, head))
    await TriggerWorker(wr, 1.0).drain()
    [run_id] = (await wr.trigger_view("k-1"))["runs"]
    return wr, jobs, (await wr.view(run_id))["jobs"]["build"]["smith_jobs"]


async def run_one(wr: WorkflowRuns, jobs: RedisJobs, job_id: str, conclusion: str) -> None:
    """An agent leases the job, starts it (the report ControlPlane.report passes on) and finishes it."""
    lease = await jobs.lease("agent-1", [(await jobs.get(job_id)).runner_class], 1)
    assert lease is not None and lease.job.id == job_id
    await wr.reported(await jobs.report("agent-1", job_id, JobState.RUNNING))
    state = "succeeded" if conclusion == "success" else "failed"
    report = StatusReport.model_validate({"state": state, "conclusion": conclusion})
    await wr.finished("agent-1", await jobs.get(job_id), report)
    await wr.reported(await jobs.report("agent-1", job_id, JobState(state)))


def states(fake: FakeGitHub, name: str) -> list[tuple[str, Any]]:
    """The statuses and conclusions a check run was given, in order, from the requests the fake answered."""
    [check] = fake.checks.named(name)
    path = f"/repos/{REPO}/check-runs"
    made = [r for r in fake.requests if r.path == path and r.body.get("external_id") == check["external_id"]]
    updated = [r for r in fake.requests if r.path == f"{path}/{check['id']}"]
    return [(r.body.get("status"), r.body.get("conclusion")) for r in made + updated if r.status < 300]


async def test_each_job_is_a_check_run_from_queued_to_its_conclusion(
    redis_url: str, tmp_path: Path, github: tuple[FakeGitHub, GitHubApp]
) -> None:
    fake, client = github
    wr, jobs, (alpine, debian) = await start(redis_url, tmp_path, client)
    [queued] = fake.checks.named("CI / build (alpine)")
    assert (queued["status"], queued["external_id"], queued["head_sha"]) == ("queued", alpine, pull_head(fake))
    await run_one(wr, jobs, alpine, "success")
    await run_one(wr, jobs, debian, "failure")
    [a], [d] = fake.checks.named("CI / build (alpine)"), fake.checks.named("CI / build (debian)")
    assert (a["status"], a["conclusion"]) == ("completed", "success")
    assert (d["status"], d["conclusion"]) == ("completed", "failure")
    assert states(fake, "CI / build (alpine)") == [("queued", None), ("in_progress", None), ("completed", "success")]
    # The run-level commit status goes on as before; no job status (checks worked).
    assert [(s["context"], s["state"]) for s in fake.statuses] == [("smith/CI", "pending"), ("smith/CI", "failure")]
    assert fake.violations == []


def pull_head(fake: FakeGitHub) -> str:
    return str(fake.statuses[0]["sha"])  # the run's pending status is on the pull request's head


async def test_an_app_without_the_checks_permission_reports_jobs_as_commit_statuses(
    redis_url: str, tmp_path: Path, github: tuple[FakeGitHub, GitHubApp]
) -> None:
    fake, client = github
    fake.installations[INSTALLATION].checks = False
    wr, jobs, (alpine, debian) = await start(redis_url, tmp_path, client)
    await run_one(wr, jobs, alpine, "success")
    await run_one(wr, jobs, debian, "success")
    assert fake.checks.named("CI / build (alpine)") == []
    mine = [(s["context"], s["state"], s["description"]) for s in fake.statuses if s["context"].endswith("(alpine)")]
    assert mine == [
        ("CI / build (alpine)", "pending", "queued"),
        ("CI / build (alpine)", "pending", "running"),
        ("CI / build (alpine)", "success", "success"),
    ]
    assert fake.statuses[-1]["context"] == "smith/CI" and fake.statuses[-1]["state"] == "success"
    refused = [r for r in fake.requests if r.path.endswith("/check-runs")]
    assert [r.status for r in refused] == [403]  # asked once; this process remembers the refusal


async def test_check_runs_are_tried_again_ten_minutes_after_a_403(
    redis_url: str, tmp_path: Path, github: tuple[FakeGitHub, GitHubApp]
) -> None:
    """Granting "Checks: write" takes effect without a restart; a job that began as a commit status ends as one."""
    fake, client = github
    fake.installations[INSTALLATION].checks = False
    now = [1000.0]
    wr, jobs, (alpine, _) = await start(redis_url, tmp_path, client, clock=lambda: now[0])
    rec = await wr.runs.get((await wr.trigger_view("k-1"))["runs"][0])
    fake.installations[INSTALLATION].checks = True  # the permission is granted
    now[0] += RETRY_CHECKS_AFTER - 1
    await wr.checks.report(rec["id"], rec, "early-1", "early", "queued")
    assert fake.checks.named("CI / early") == []  # the 403 is still believed: a commit status, not asked
    assert [r.status for r in fake.requests if r.path.endswith("/check-runs")] == [403]
    now[0] += 1
    await wr.checks.report(rec["id"], rec, "late-1", "late", "queued")
    [late] = fake.checks.named("CI / late")  # asked again, and made
    assert (late["status"], late["external_id"]) == ("queued", "late-1")
    await run_one(wr, jobs, alpine, "success")  # queued as a commit status before: it ends as one
    await wr.checks.report(rec["id"], rec, "early-1", "early", "completed", "success")
    assert fake.checks.named("CI / build (alpine)") == [] and fake.checks.named("CI / early") == []
    mine = [(s["state"], s["description"]) for s in fake.statuses if s["context"] == "CI / build (alpine)"]
    assert mine == [("pending", "queued"), ("pending", "running"), ("success", "success")]
    early = [(s["state"], s["description"]) for s in fake.statuses if s["context"] == "CI / early"]
    assert early == [("pending", "queued"), ("success", "success")]
    assert fake.violations == []


async def test_a_late_queued_report_never_moves_a_check_run_back(
    redis_url: str, tmp_path: Path, github: tuple[FakeGitHub, GitHubApp]
) -> None:
    """The agent's running report may reach the control plane before the queued check run was made."""
    fake, client = github
    wr, _, _ = await start(redis_url, tmp_path, client)
    rec = await wr.runs.get((await wr.trigger_view("k-1"))["runs"][0])
    await wr.checks.report(rec["id"], rec, "late-1", "late", "in_progress")
    await wr.checks.report(rec["id"], rec, "late-1", "late", "queued")
    [check] = fake.checks.named("CI / late")
    assert check["status"] == "in_progress" and check["external_id"] == "late-1"
