"""``concurrency`` groups of runs through the platform, GitHub's semantics, on the real Valkey: per group at most one
run running and one pending; a newer pending run replaces (cancels) the pending one; ``cancel-in-progress``
cancels the running one; the group's expression sees ``github``; a control plane that died right after a run left
its group still starts the pending run (the next sweep)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from smith.adapters.redis.jobs import RedisJobs
from smith.control.wftriggers import TriggerWorker
from smith.control.workflows import WorkflowRuns
from smith.domain.jobs import JobState
from smith.errors import NotFound
from smith.wire.agent import StatusReport
from tests.workflows.test_platform import REPO, make_repo
from tests.workflows.test_runs import Statuses, plane, report

DEPLOY = """\
name: Deploy
on: push
concurrency:
  group: deploy-${{ github.repository }}
  cancel-in-progress: ${{ github.ref == 'refs/heads/main' }}
jobs:
  only:
    runs-on: ubuntu-latest
    steps:
      - run: echo deploying
"""

PER_REF = """\
name: PerRef
on: push
concurrency: ci-${{ github.ref }}
jobs:
  only:
    runs-on: ubuntu-latest
    steps:
      - run: echo testing
"""


def push_payload(ref: str, before: str, after: str) -> dict[str, Any]:
    owner, name = REPO.split("/")
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "created": False,
        "deleted": False,
        "repository": {"full_name": REPO, "name": name, "owner": {"login": owner}},
    }


async def push(wr: WorkflowRuns, delivery: str, ref: str, base: str, head: str) -> str:
    await wr.webhook("push", delivery, push_payload(ref, base, head))
    await TriggerWorker(wr, 1.0).drain()
    [run_id] = (await wr.trigger_view(delivery))["runs"]
    return str(run_id)


async def smith_jobs(wr: WorkflowRuns, run_id: str) -> list[str]:
    return list((await wr.view(run_id))["jobs"]["only"]["smith_jobs"])


async def finish(wr: WorkflowRuns, jobs: RedisJobs, run_id: str) -> None:
    [job_id] = await smith_jobs(wr, run_id)
    await report(wr, jobs, job_id, "agent-1", state="succeeded", conclusion="success")
    await wr.advance(run_id)


async def test_one_running_one_pending_and_a_newer_pending_run_replaces_the_older(
    redis_url: str, tmp_path: Path
) -> None:
    repo, base, head = make_repo(tmp_path, {"deploy.yml": DEPLOY})
    statuses = Statuses()
    wr, jobs = plane(redis_url, repo, statuses)
    a = await push(wr, "a", "refs/heads/feature", base, head)
    b = await push(wr, "b", "refs/heads/feature", base, head)
    assert len(await smith_jobs(wr, a)) == 1 and await smith_jobs(wr, b) == []  # b waits for a
    assert (await wr.view(b))["state"] == "running"
    c = await push(wr, "c", "refs/heads/feature", base, head)
    view_b = await wr.view(b)
    assert (view_b["state"], view_b["conclusion"]) == ("completed", "cancelled")  # replaced by c
    assert view_b["jobs"]["only"]["result"] == "cancelled" and await smith_jobs(wr, c) == []
    await wr.sweep()  # nothing moves while a runs
    assert await smith_jobs(wr, c) == []
    await finish(wr, jobs, a)
    assert (await wr.view(a))["conclusion"] == "success"
    [c_job] = await smith_jobs(wr, c)  # a left the group: c runs
    assert (await jobs.get(c_job)).state == JobState.QUEUED
    ended = [(s[0], s[2]) for s in statuses.posted if s[0] != "pending"]
    assert ended == [("error", head), ("success", head)]  # b cancelled (statuses know no "cancelled"), a


async def test_cancel_in_progress_cancels_the_running_run(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"deploy.yml": DEPLOY})
    wr, jobs = plane(redis_url, repo, Statuses())
    a = await push(wr, "a", "refs/heads/feature", base, head)
    a_job = await running(jobs, await smith_jobs(wr, a))
    b = await push(wr, "b", "refs/heads/main", base, head)  # cancel-in-progress is true on main
    cancelling = await jobs.get(a_job)
    assert cancelling.cancel_requested  # the agent is told through its heartbeat, stops the VM and reports
    assert "concurrency group 'deploy-Codertocat/Hello-World'" in cancelling.reason
    [b_job] = await smith_jobs(wr, b)
    assert (await jobs.get(b_job)).state == JobState.QUEUED  # b runs at once
    await jobs.report("agent-9", a_job, JobState.CANCELLED)
    await wr.sweep()
    view_a = await wr.view(a)
    assert (view_a["state"], view_a["conclusion"]) == ("completed", "cancelled"), view_a


async def test_the_group_expression_sees_github(redis_url: str, tmp_path: Path) -> None:
    repo, base, head = make_repo(tmp_path, {"ci.yml": PER_REF})
    wr, _ = plane(redis_url, repo, Statuses())
    a = await push(wr, "a", "refs/heads/feature", base, head)
    b = await push(wr, "b", "refs/heads/other", base, head)  # another group: runs at once
    c = await push(wr, "c", "refs/heads/feature", base, head)  # a's group: waits
    assert [len(await smith_jobs(wr, r)) for r in (a, b, c)] == [1, 1, 0]


async def test_a_control_plane_that_died_after_a_run_left_its_group_still_starts_the_pending_one(
    redis_url: str, tmp_path: Path
) -> None:
    repo, base, head = make_repo(tmp_path, {"deploy.yml": DEPLOY})
    wr, jobs = plane(redis_url, repo, Statuses())
    a = await push(wr, "a", "refs/heads/feature", base, head)
    b = await push(wr, "b", "refs/heads/feature", base, head)
    [a_job] = await smith_jobs(wr, a)
    # a's job finished and the process got only as far as a leaving its group, then died.
    await running(jobs, [a_job])
    await jobs.report("agent-9", a_job, JobState.SUCCEEDED)
    assert await wr.runs.leave(REPO, "deploy-Codertocat/Hello-World", a) == b
    wr2, _ = plane(redis_url, repo, Statuses())
    await wr2.sweep()
    assert len(await smith_jobs(wr2, b)) == 1
    assert (await wr2.view(a))["state"] == "completed"


JOB_GROUP = """\
name: Release
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo build
  publish:
    needs: build
    runs-on: ubuntu-latest
    concurrency:
      group: publish-${{ github.repository }}
      cancel-in-progress: ${{ github.ref == 'refs/heads/main' }}
    steps:
      - run: echo publish
"""


async def jobs_of(wr: WorkflowRuns, run_id: str, job: str) -> list[str]:
    return list((await wr.view(run_id))["jobs"][job]["smith_jobs"])


async def succeed(wr: WorkflowRuns, jobs: RedisJobs, run_id: str, job: str) -> str:
    [job_id] = await jobs_of(wr, run_id, job)
    await report(wr, jobs, job_id, "agent-1", state="succeeded", conclusion="success")
    await wr.advance(run_id)
    return job_id


async def publishing(redis_url: str, tmp_path: Path) -> tuple[WorkflowRuns, RedisJobs, str, str, tuple[str, str]]:
    """Run a of the release workflow, its build done and its publish job running."""
    repo, base, head = make_repo(tmp_path, {"release.yml": JOB_GROUP})
    wr, jobs = plane(redis_url, repo, Statuses())
    a = await push(wr, "a", "refs/heads/feature", base, head)
    await succeed(wr, jobs, a, "build")
    return wr, jobs, a, await running(jobs, await jobs_of(wr, a, "publish")), (base, head)


async def test_a_jobs_own_group_holds_that_job_not_the_run(redis_url: str, tmp_path: Path) -> None:
    wr, jobs, a, a_publish, (base, head) = await publishing(redis_url, tmp_path)
    b = await push(wr, "b", "refs/heads/feature", base, head)
    await succeed(wr, jobs, b, "build")  # the run goes on: only publish has a group
    assert await queued_ids(jobs, await jobs_of(wr, b, "publish")) == []  # b's publish waits for a's
    await wr.sweep()
    assert await queued_ids(jobs, await jobs_of(wr, b, "publish")) == []
    done = StatusReport.model_validate({"state": "succeeded", "conclusion": "success"})
    await wr.finished("agent-9", await jobs.get(a_publish), done)
    await wr.reported(await jobs.report("agent-9", a_publish, JobState.SUCCEEDED))
    assert (await wr.view(a))["conclusion"] == "success"
    assert len(await queued_ids(jobs, await jobs_of(wr, b, "publish"))) == 1  # a's left the group: b's is queued


async def test_a_jobs_group_with_cancel_in_progress_cancels_the_other_runs_job(redis_url: str, tmp_path: Path) -> None:
    wr, jobs, a, a_publish, (base, head) = await publishing(redis_url, tmp_path)
    b = await push(wr, "b", "refs/heads/main", base, head)
    await succeed(wr, jobs, b, "build")  # b's publish (cancel-in-progress on main) cancels a's
    assert (await jobs.get(a_publish)).cancel_requested
    assert len(await queued_ids(jobs, await jobs_of(wr, b, "publish"))) == 1
    await jobs.report("agent-9", a_publish, JobState.CANCELLED)  # its agent stopped it
    await wr.sweep()
    view = await wr.view(a)
    assert (view["conclusion"], view["jobs"]["publish"]["result"]) == ("failure", "cancelled")


async def queued_ids(jobs: RedisJobs, ids: list[str]) -> list[str]:
    """Those of the instances whose Smith job is queued (an instance waiting in a group has none yet)."""
    out = []
    for i in ids:
        with contextlib.suppress(NotFound):
            if (await jobs.get(i)).state == JobState.QUEUED:
                out.append(i)
    return out


async def running(jobs: RedisJobs, ids: list[str]) -> str:
    """The one instance, leased and running on agent-9 (so later jobs are leased by others)."""
    [job_id] = ids
    lease = await jobs.lease("agent-9", [(await jobs.get(job_id)).runner_class], 1)
    assert lease is not None and lease.job.id == job_id
    await jobs.report("agent-9", job_id, JobState.RUNNING)
    return job_id
