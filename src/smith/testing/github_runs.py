"""Workflow runs as the fake GitHub describes them (``GET /repos/{owner}/{repo}/actions/runs/{run_id}``).

What GitHub gives, and so what this gives: ``event`` is what started the run (``push``, ``pull_request``...);
``head_branch`` the branch the code comes from, named as in its own repository (a fork's ``main`` is ``main``);
``head_repository`` that repository (a fork's, for a fork's pull request); ``pull_requests`` the open pull
requests whose head is the run's, as ``pull-request-minimal``, and ``[]`` when the head is in a fork (GitHub
lists only pull requests whose head is in the run's repository) or with ``exclude_pull_requests=true``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

API = "https://api.github.com"

# GitHub's URL templates of a ``minimal-repository``, relative to ``{API}/repos/{full_name}``.
_REPO_URLS = {
    "archive_url": "/{archive_format}{/ref}",
    "assignees_url": "/assignees{/user}",
    "blobs_url": "/git/blobs{/sha}",
    "branches_url": "/branches{/branch}",
    "collaborators_url": "/collaborators{/collaborator}",
    "comments_url": "/comments{/number}",
    "commits_url": "/commits{/sha}",
    "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}",
    "contributors_url": "/contributors",
    "deployments_url": "/deployments",
    "downloads_url": "/downloads",
    "events_url": "/events",
    "forks_url": "/forks",
    "git_commits_url": "/git/commits{/sha}",
    "git_refs_url": "/git/refs{/sha}",
    "git_tags_url": "/git/tags{/sha}",
    "hooks_url": "/hooks",
    "issue_comment_url": "/issues/comments{/number}",
    "issue_events_url": "/issues/events{/number}",
    "issues_url": "/issues{/number}",
    "keys_url": "/keys{/key_id}",
    "labels_url": "/labels{/name}",
    "languages_url": "/languages",
    "merges_url": "/merges",
    "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}",
    "pulls_url": "/pulls{/number}",
    "releases_url": "/releases{/id}",
    "stargazers_url": "/stargazers",
    "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers",
    "subscription_url": "/subscription",
    "tags_url": "/tags",
    "teams_url": "/teams",
    "trees_url": "/git/trees{/sha}",
}


@dataclass
class WorkflowRun:
    id: int
    repo: str  # owner/name: where the workflow runs
    event: str = "push"
    head_branch: str = "main"
    head_repo: str = ""  # owner/name the code comes from; "" = ``repo`` (a fork's full name for a fork's PR)
    pull_number: int = 0  # the pull request that started a pull_request* run
    base_branch: str = "main"
    head_sha: str = "f" * 40
    created_at: float = 0.0

    @property
    def head(self) -> str:
        return self.head_repo or self.repo


def repo_id(full_name: str) -> int:
    return int.from_bytes(hashlib.sha256(full_name.lower().encode()).digest()[:4]) % 10**9


def minimal_repository(full_name: str, *, fork: bool = False) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    url = f"{API}/repos/{full_name}"
    return {
        "id": repo_id(full_name),
        "node_id": base64.b64encode(f"010:Repository{repo_id(full_name)}".encode()).decode(),
        "name": name,
        "full_name": full_name,
        "owner": account(owner),
        "private": False,
        "html_url": f"https://github.com/{full_name}",
        "description": None,
        "fork": fork,
        "url": url,
        "git_url": f"git://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git",
        **{key: url + suffix for key, suffix in _REPO_URLS.items()},
    }


def run_body(run: WorkflowRun, *, status: str, exclude_pull_requests: bool = False) -> dict[str, Any]:
    """The run as ``GET .../actions/runs/{run_id}`` answers (``workflow-run``)."""
    url = f"{API}/repos/{run.repo}/actions/runs/{run.id}"
    when = _iso(run.created_at)
    fork = run.head.lower() != run.repo.lower()
    pulls = [] if fork or exclude_pull_requests or not run.pull_number else [_pull(run)]
    return {
        "id": run.id,
        "name": "CI",
        "node_id": base64.b64encode(f"WFR_{run.id}".encode()).decode(),
        "check_suite_id": run.id + 1,
        "check_suite_node_id": base64.b64encode(f"CS_{run.id + 1}".encode()).decode(),
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": ".github/workflows/ci.yml",
        "display_title": f"CI on {run.head_branch}",
        "run_number": run.id % 1000,
        "run_attempt": 1,
        "referenced_workflows": [],
        "event": run.event,
        "status": status,
        "conclusion": None,
        "workflow_id": 159038,
        "url": url,
        "html_url": f"https://github.com/{run.repo}/actions/runs/{run.id}",
        "pull_requests": pulls,
        "created_at": when,
        "updated_at": when,
        "actor": account("octocat"),
        "triggering_actor": account("octocat"),
        "run_started_at": when,
        "jobs_url": f"{url}/jobs",
        "logs_url": f"{url}/logs",
        "check_suite_url": f"{API}/repos/{run.repo}/check-suites/{run.id + 1}",
        "artifacts_url": f"{url}/artifacts",
        "cancel_url": f"{url}/cancel",
        "rerun_url": f"{url}/rerun",
        "previous_attempt_url": None,
        "workflow_url": f"{API}/repos/{run.repo}/actions/workflows/159038",
        "head_commit": {
            "id": run.head_sha,
            "tree_id": "d" * 40,
            "message": "a change",
            "timestamp": when,
            "author": {"name": "Octo Cat", "email": "octocat@github.com"},
            "committer": {"name": "GitHub", "email": "noreply@github.com"},
        },
        "repository": minimal_repository(run.repo),
        "head_repository": minimal_repository(run.head, fork=fork),
        "head_repository_id": repo_id(run.head),
    }


def _pull(run: WorkflowRun) -> dict[str, Any]:
    """A ``pull-request-minimal``: the pull request of a same-repository pull_request run."""
    repo = {"id": repo_id(run.repo), "url": f"{API}/repos/{run.repo}", "name": run.repo.partition("/")[2]}
    return {
        "id": 1_000_000 + run.pull_number,
        "number": run.pull_number,
        "url": f"{API}/repos/{run.repo}/pulls/{run.pull_number}",
        "head": {"ref": run.head_branch, "sha": run.head_sha, "repo": repo},
        "base": {"ref": run.base_branch, "sha": "b" * 40, "repo": repo},
    }


def id_of(login: str) -> int:
    return int.from_bytes(hashlib.sha256(login.lower().encode()).digest()[:4]) % 10**8


def account(login: str, kind: str = "User") -> dict[str, Any]:
    """A ``simple-user`` (what GitHub gives for users and organisations alike)."""
    url = f"{API}/users/{login}"
    return {
        "login": login,
        "id": id_of(login),
        "node_id": base64.b64encode(f"04:{kind}{id_of(login)}".encode()).decode(),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{id_of(login)}?v=4",
        "gravatar_id": "",
        "url": url,
        "html_url": f"https://github.com/{login}",
        "followers_url": f"{url}/followers",
        "following_url": f"{url}/following{{/other_user}}",
        "gists_url": f"{url}/gists{{/gist_id}}",
        "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{url}/subscriptions",
        "organizations_url": f"{url}/orgs",
        "repos_url": f"{url}/repos",
        "events_url": f"{url}/events{{/privacy}}",
        "received_events_url": f"{url}/received_events",
        "type": kind,
        "site_admin": False,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
