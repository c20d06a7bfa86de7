"""Runner jobs end to end as GitHub really runs them: the fake GitHub queues jobs and gives each to whichever
matching runner asks, the stand-in runner (GitHub's run.sh/run-helper.sh and a listener) runs in the sandbox, and
Smith's view of each job must end as GitHub's does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.testing.github_actions import WorkflowJob
from tests.agent.github_world import REPO, World, world
from tests.control.conftest import operator_token

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)")


async def test_a_runner_job_ends_as_github_ran_it(redis_url: str, tmp_path: Path) -> None:
    async with world(redis_url, tmp_path) as w:
        await w.add_agent("h1")
        job = w.fake.actions.queue_job(REPO, ["self-hosted", "smith-2vcpu"], script="echo hello from the job")
        final = await w.until(
            lambda: _final(w, job.id), message=f"job never ended in Smith: {w.fake.actions.job(job.id)}"
        )
        gh = w.fake.actions.job(job.id)
        assert gh.status == "completed" and gh.conclusion == "success", gh
        assert final["state"] == "succeeded", final


async def test_a_runner_that_never_starts_is_not_reported_succeeded(redis_url: str, tmp_path: Path) -> None:
    """The listener exits 1 at once (as when it cannot write its directory); run-helper.sh maps that to 0 and so
    does run.sh: the exit code says nothing."""
    async with world(redis_url, tmp_path, max_attempts=2) as w:
        await w.add_agent("h1", listener="#!/bin/sh\necho 'An error occurred: cannot start'\nexit 1\n")
        job = w.fake.actions.queue_job(REPO, ["self-hosted", "smith-2vcpu"])
        final = await w.until(lambda: _final(w, job.id), message="job never ended in Smith")
        assert final["state"] == "failed" and "runners in a row ran no job" in final["reason"], final
        assert final["attempts"] == 0  # each runner that ran nothing gave its attempt back
        assert w.fake.actions.job(job.id).status == "queued"
        # Every runner minted for it, registered but never used, was removed again.
        await w.until(lambda: not w.fake.runners_in("repo:codertocat/hello-world"), message="runners left behind")


async def _final(w: World, job_id: int) -> dict[str, object] | None:
    view = await w.job(job_id)
    return view if view.get("state") in ("succeeded", "failed", "cancelled") else None


async def test_jobs_with_overlapping_labels_in_two_classes_all_run_once_with_githubs_result(
    redis_url: str, tmp_path: Path
) -> None:
    """A runner made for a big job has every label of a small one, so GitHub may give it the small job: whatever
    GitHub does, every job runs once, and Smith ends each as GitHub did."""
    async with world(redis_url, tmp_path) as w:
        w.fake.actions.assign_order = "random"
        await w.add_agent("h1", vcpus=8, runner_idle_seconds=3)
        small = [w.fake.actions.queue_job(REPO, ["self-hosted"], script="true") for _ in range(2)]
        big = [w.fake.actions.queue_job(REPO, ["self-hosted", "smith-4vcpu"], script="true") for _ in range(2)]
        failing = w.fake.actions.queue_job(REPO, ["self-hosted"], script="exit 1")
        jobs = [*small, *big, failing]
        finals = {j.id: await w.until(lambda j=j: _final(w, j.id), timeout=60) for j in jobs}  # type: ignore[misc]
        for j in jobs:
            gh = w.fake.actions.job(j.id)
            assert gh.status == "completed", gh
            started = [d for d in w.fake.actions.deliveries if d.job_id == j.id and d.action == "in_progress"]
            assert len(started) == 1  # GitHub ran it once
            assert finals[j.id]["state"] == ("succeeded" if gh.conclusion == "success" else "failed"), finals[j.id]
            assert finals[j.id]["github_runner"] == gh.runner_name  # Smith knows where it ran
        assert finals[failing.id]["state"] == "failed"
        await w.until(lambda: not w.fake.runners_in("repo:codertocat/hello-world"), message="runners left behind")


async def test_a_runner_that_takes_another_job_is_recorded_and_the_first_job_still_gets_a_runner(
    redis_url: str, tmp_path: Path
) -> None:
    async with world(redis_url, tmp_path) as w:
        actions = w.fake.actions
        first, second = await _runner_waits_for_first_while_second_is_queued(w)
        actions.paused = False  # the runner minted for `first` takes `second`, the newest
        a = await w.until(lambda: _final(w, first.id), timeout=60, message="first never ended")
        b = await w.until(lambda: _final(w, second.id), timeout=60, message="second never ended")
        assert actions.job(second.id).runner_name == f"smith-{first.id}-1"
        assert b["state"] == "succeeded" and b["github_runner"] == f"smith-{first.id}-1", b
        assert a["state"] == "succeeded" and a["github_runner"] not in ("", f"smith-{first.id}-1"), a
        assert a["attempts"] == 1  # its first runner running another job cost it no attempt
        assert actions.job(first.id).status == "completed"


async def test_a_runner_github_gives_no_job_is_stopped_and_removed(redis_url: str, tmp_path: Path) -> None:
    async with world(redis_url, tmp_path, max_runner_releases=1) as w:
        w.fake.actions.paused = True  # GitHub gives nothing to anyone
        await w.add_agent("h1", runner_idle_seconds=1)
        job = w.fake.actions.queue_job(REPO, ["self-hosted"])
        final = await w.until(lambda: _final(w, job.id), timeout=60, message="never released")
        assert final["state"] == "failed" and "ran no job" in final["reason"]
        assert "gave the runner no job in 1s" in w.log_of(job.id)
        await w.until(lambda: not w.fake.runners_in("repo:codertocat/hello-world"), message="runners left behind")


async def test_webhooks_arriving_late_and_out_of_order_still_end_every_job_as_github_did(
    redis_url: str, tmp_path: Path
) -> None:
    """As above, but GitHub's in_progress/completed webhooks arrive only after the first runner's lease ended,
    newest first: Smith waits for GitHub's word, then puts the first job back and ends both as GitHub did."""
    async with world(redis_url, tmp_path) as w:
        actions = w.fake.actions
        first, second = await _runner_waits_for_first_while_second_is_queued(w)
        actions.hold()
        actions.paused = False
        waiting = await w.until(
            lambda: _waiting(w, first.id), timeout=60, message="the first lease never ended waiting for GitHub"
        )
        assert waiting["state"] == "running" and waiting["agent_id"] == ""
        actions.flush(reverse=True)
        a = await w.until(lambda: _final(w, first.id), timeout=60, message="first never ended")
        b = await w.until(lambda: _final(w, second.id), timeout=60, message="second never ended")
        assert b["state"] == "succeeded" and b["github_runner"] == f"smith-{first.id}-1", b
        assert a["state"] == "succeeded" and a["github_runner"] not in ("", f"smith-{first.id}-1"), a
        assert actions.job(first.id).status == actions.job(second.id).status == "completed"


async def _waiting(w: World, job_id: int) -> dict[str, object] | None:
    view = await w.job(job_id)
    return view if "waiting for GitHub" in str(view.get("reason")) else None


async def _runner_waits_for_first_while_second_is_queued(w: World) -> tuple[WorkflowJob, WorkflowJob]:
    """One VM at a time; the runner minted for `first` is online when `second` is queued; GitHub gives nothing
    until the test unpauses it, and then the newest job first."""
    actions = w.fake.actions
    actions.paused, actions.assign_order = True, "newest"
    await w.add_agent("h1", max_vms=1, runner_idle_seconds=5)
    first = actions.queue_job(REPO, ["self-hosted"], name="first")
    await w.until(lambda: any(r["status"] == "online" for r in w.fake.runners_in("repo:codertocat/hello-world")))
    second = actions.queue_job(REPO, ["self-hosted"], name="second")
    actions.wait_delivered()
    return first, second


async def test_a_job_cancelled_on_github_while_its_vm_boots_releases_the_vm_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    async with world(redis_url, tmp_path) as w:
        w.fake.actions.paused = True  # no runner gets it: as if its VM were still booting
        agent = await w.add_agent("h1")
        job = w.fake.actions.queue_job(REPO, ["self-hosted"])
        await w.until(lambda: agent.jobs, message="never leased")
        w.fake.actions.cancel(job.id)  # on GitHub: completed, cancelled
        final = await w.until(lambda: _final(w, job.id), timeout=30, message="the VM was kept")
        assert final["state"] == "cancelled" and final["github_conclusion"] == "cancelled", final
        await w.until(lambda: not agent.jobs, message="the VM was kept")  # long before any job timeout
        await w.until(lambda: not w.fake.runners_in("repo:codertocat/hello-world"), message="runner left behind")


async def test_a_job_github_already_runs_elsewhere_gets_no_runner(redis_url: str, tmp_path: Path) -> None:
    """Its in_progress webhook was lost: before minting, the jobs API says GitHub already runs it."""
    async with world(redis_url, tmp_path) as w:
        actions = w.fake.actions
        actions.paused = True
        job = actions.queue_job(REPO, ["self-hosted"])
        actions.wait_delivered()
        with actions.lock:  # another (not Smith's) runner took it; GitHub's webhook never arrived
            j = actions.jobs[job.id]
            j.status, j.runner_id, j.runner_name = "in_progress", 1, "someone-else"
        await w.add_agent("h1")
        view = await w.until(
            lambda: _reason_has(w, job.id, "GitHub ran it on runner someone-else"), message="never checked"
        )
        assert view["state"] == "running" and view["github_runner"] == "someone-else", view
        assert not w.fake.runners_in("repo:codertocat/hello-world")  # nothing minted
        assert w.fake.calls("GET", f"/actions/jobs/{job.id}")


async def _reason_has(w: World, job_id: int, text: str) -> dict[str, object] | None:
    view = await w.job(job_id)
    return view if text in str(view.get("reason")) else None


async def test_github_down_or_refusing_for_a_while_loses_no_job(redis_url: str, tmp_path: Path) -> None:
    """5xx bursts, then a 403 (a missing permission: an alarm operators see), then GitHub answers again: the job
    runs once, with its attempts unspent, and the alarm clears."""
    async with world(redis_url, tmp_path, max_attempts=1) as w:
        w.fake.server_errors(4, path="generate-jitconfig")  # two leases' worth (the client tries twice each)
        w.fake.fail(403, 1, message="Resource not accessible by integration", path="generate-jitconfig")
        await w.add_agent("h1")
        job = w.fake.actions.queue_job(REPO, ["self-hosted"])
        alarm = await w.until(lambda: _github_status(w, alarmed=True), timeout=30, message="no alarm raised")
        assert alarm["alarm"]["status"] == 403 and alarm["alarm"]["meaning"] == "missing permission"
        final = await w.until(lambda: _final(w, job.id), timeout=60, message="the job was lost")
        assert final["state"] == "succeeded" and final["attempts"] == 1, final
        assert w.fake.actions.job(job.id).conclusion == "success"
        assert (await _github_status(w, alarmed=False)) is not None  # cleared once GitHub answered


async def _github_status(w: World, *, alarmed: bool) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=w.control.url, headers={"Authorization": f"Bearer {operator_token()}"}) as c:
        github = (await c.get("/v1/queue")).json()["github"]
    return github if (github["alarm"] is not None) == alarmed else None


async def test_a_runner_refusing_root_is_never_reported_succeeded(redis_url: str, tmp_path: Path) -> None:
    """GitHub's run-helper.sh refusing root ("Must not run interactively with sudo", exit 1), which run.sh turns
    into 0: the job is not reported succeeded, its attempt is not spent, its runners are removed."""
    async with world(redis_url, tmp_path, max_runner_releases=2) as w:
        await w.add_agent("h1", as_if_root=True)
        job = w.fake.actions.queue_job(REPO, ["self-hosted"])
        final = await w.until(lambda: _final(w, job.id), timeout=60, message="job never ended in Smith")
        assert final["state"] == "failed" and final["attempts"] == 0, final
        assert "Must not run interactively with sudo" in w.log_of(job.id)
        assert w.fake.actions.job(job.id).status == "queued"  # GitHub never got a runner for it
        await w.until(lambda: not w.fake.runners_in("repo:codertocat/hello-world"), message="runners left behind")


async def test_a_deployment_never_deletes_another_deployments_runners(redis_url: str, tmp_path: Path) -> None:
    scope = "repo:codertocat/hello-world"
    async with world(redis_url, tmp_path, deployment_id="blue", github_runner_sweep_seconds=0.2) as w:
        green_idle = w.fake.add_runner(scope, "smith-green-900-1")
        green_busy = w.fake.add_runner(scope, "smith-green-901-1", status="online", busy=True)
        unnamed = w.fake.add_runner(scope, "smith-902-1")  # a deployment without an id
        stale = w.fake.add_runner(scope, "smith-blue-903-1")  # ours, left by a lease long gone
        await w.add_agent("h1")
        job = w.fake.actions.queue_job(REPO, ["self-hosted"])  # blue mints (and so sweeps) in this repository
        final = await w.until(lambda: _final(w, job.id), timeout=60)
        assert final["state"] == "succeeded" and final["github_runner"].startswith("smith-blue-"), final
        await w.until(lambda: stale not in w.fake.runners_in(scope), message="blue's stale runner never swept")
        sweeps = len(w.fake.calls("GET", "/actions/runners"))
        await w.until(lambda: len(w.fake.calls("GET", "/actions/runners")) > sweeps + 2, message="no more sweeps")
        left = w.fake.runners_in(scope)
        assert green_idle in left and green_busy in left and unnamed in left
        deleted = {c.path.rsplit("/", 1)[-1] for c in w.fake.calls("DELETE")}
        assert not deleted & {str(green_idle["id"]), str(green_busy["id"]), str(unnamed["id"])}


async def test_lost_webhooks_are_made_up_for_by_the_jobs_api(redis_url: str, tmp_path: Path) -> None:
    """Every in_progress/completed webhook is lost: jobs waiting for GitHub's word are looked up with the jobs
    API, so the job whose runner ran another one is queued again, and both end as GitHub ran them."""
    settings = {"github_runner_sweep_seconds": 0.3, "github_resolve_after_seconds": 0.5}
    async with world(redis_url, tmp_path, **settings) as w:
        actions = w.fake.actions
        first, second = await _runner_waits_for_first_while_second_is_queued(w)
        actions.hold()  # and never flushed
        actions.paused = False
        a = await w.until(lambda: _final(w, first.id), timeout=60, message="first never ended")
        b = await w.until(lambda: _final(w, second.id), timeout=60, message="second never ended")
        assert b["state"] == "succeeded" and b["github_runner"] == f"smith-{first.id}-1", b
        assert a["state"] == "succeeded" and a["github_runner"] == actions.job(first.id).runner_name, a
        assert a["github_runner"] != f"smith-{first.id}-1"
