"""GitHub's view wins over an expired lease: a job GitHub shows in progress or completed is not queued again."""

from __future__ import annotations

import time

import pytest

from tests.control.conftest import Control, queued_payload
from tests.control.test_queue import job, lease


def github_says(control: Control, job_id: int, action: str, runner: str, conclusion: str | None = None) -> None:
    p = queued_payload(job_id, action=action)
    p["workflow_job"].update(runner_name=runner, conclusion=conclusion)
    assert control.deliver(p).status_code == 202


def until_reclaimed(control: Control, job_id: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        view = job(control, job_id)
        if view["state"] != "assigned":
            return view
        time.sleep(0.05)
    raise AssertionError("the lease was never reclaimed")


@pytest.mark.parametrize(
    ("action", "conclusion", "state"),
    [("in_progress", None, "running"), ("completed", "success", "succeeded"), ("completed", "cancelled", "cancelled")],
)
def test_an_expired_lease_does_not_requeue_a_job_github_runs_or_ran(
    control: Control, action: str, conclusion: str | None, state: str
) -> None:
    control.deliver(queued_payload(5001))
    a = control.agent("agent-gone")
    assert lease(a) is not None
    github_says(control, 5001, action, "smith-5001-1", conclusion)
    # The agent never heartbeats again: its lease expires (SMITH_LEASE_TTL_SECONDS=2 in these tests).
    view = until_reclaimed(control, "5001")
    assert view["state"] == state, view
    assert view["attempts"] == 1 and "lease expired" in view["reason"]
    assert lease(a, wait=0.3) is None  # nothing went back to the queue


def test_an_in_progress_for_an_unknown_job_leaves_a_tombstone(control: Control) -> None:
    github_says(control, 5002, "in_progress", "smith-9-1")
    assert job(control, "5002")["state"] == "running"
    assert control.deliver(queued_payload(5002)).json()["outcome"] == "known"  # a late queued does not enqueue it
    github_says(control, 5002, "completed", "smith-9-1", "failure")
    assert job(control, "5002")["state"] == "failed"
