"""Runner jobs end to end as GitHub really runs them: the fake GitHub queues jobs and gives each to whichever
matching runner asks, the stand-in runner (GitHub's run.sh/run-helper.sh and a listener) runs in the sandbox, and
Smith's view of each job must end as GitHub's does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.agent.github_world import REPO, world

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


async def _final(w: object, job_id: int) -> dict[str, object] | None:
    from tests.agent.github_world import World

    assert isinstance(w, World)
    view = await w.job(job_id)
    return view if view.get("state") in ("succeeded", "failed", "cancelled") else None
