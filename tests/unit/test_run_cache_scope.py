"""The cache scope of a GitHub job from its workflow run: GitHub's runs API answer -> RunOrigin -> claims."""

from __future__ import annotations

from smith.adapters.github import run_origin_of
from smith.domain.cache import RunOrigin, run_cache_claims
from smith.domain.jobs import Job, JobState
from smith.testing.github_runs import WorkflowRun, run_body

JOB = Job("1", JobState.QUEUED, "c", 2, 1024, repo="o/r", run_id=9, head_branch="main", default_branch="main")


def origin(run: WorkflowRun) -> RunOrigin:
    return run_origin_of(run_body(run, status="queued"), JOB)


def test_the_pull_request_named_is_the_one_whose_head_is_the_runs_branch() -> None:
    body = run_body(WorkflowRun(9, "o/r", "pull_request", "feature", pull_number=5, base_branch="dev"), status="x")
    other = {**body["pull_requests"][0], "number": 6, "head": {**body["pull_requests"][0]["head"], "ref": "x"}}
    body["pull_requests"].insert(0, other)
    assert run_origin_of(body, JOB) == RunOrigin("pull_request", "o/r", "o/r", "feature", 5, "dev")


def test_claims_by_origin() -> None:
    fork = origin(WorkflowRun(9, "o/r", "pull_request_target", "main", head_repo="eve/r", pull_number=3))
    assert fork.from_fork and fork.pull_number == 0  # GitHub lists no pull request for a fork's run
    assert run_cache_claims(JOB, fork) == {
        "org": "o",
        "repo": "r",
        "ref": "refs/smith/forks/eve/r/main",
        "default_ref": "refs/heads/main",
    }
    push_with_pr = origin(WorkflowRun(9, "o/r", "push", "main", pull_number=3))
    assert push_with_pr.pull_number == 0 and run_cache_claims(JOB, push_with_pr)["ref"] == "refs/heads/main"
    lost_pr = origin(WorkflowRun(9, "o/r", "pull_request", "topic"))
    topic = Job("2", JobState.QUEUED, "c", 2, 1024, repo="o/r", run_id=9, head_branch="topic", default_branch="main")
    assert (
        run_cache_claims(topic, lost_pr)
        == run_cache_claims(topic, None)
        == {
            "org": "o",
            "repo": "r",
            "ref": "refs/smith/runs/9",
            "base_ref": "refs/heads/topic",
            "default_ref": "refs/heads/main",
        }
    )
    no_run = Job("3", JobState.QUEUED, "c", 2, 1024, repo="o/r", head_branch="main", default_branch="main")
    assert run_cache_claims(no_run, None)["ref"] == "refs/smith/jobs/3"
