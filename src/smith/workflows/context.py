"""What a run knows before any job starts: the event, the repository, secrets and vars; the ``github`` context
and the ``GITHUB_*`` / ``RUNNER_*`` variables built from them."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RUN_IDS = itertools.count(int(time.time() * 1000) % 10**9)


@dataclass
class RunInfo:
    repo_dir: Path
    repository: str  # owner/name
    event_name: str
    event: dict[str, Any]
    sha: str
    ref: str
    workflow_name: str
    workflow_file: str
    secrets: dict[str, str] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    actor: str = "smith"
    server_url: str = "https://github.com"
    run_id: int = field(default_factory=lambda: next(_RUN_IDS))
    run_number: int = 1
    run_attempt: int = 1  # a re-run's attempt (github.run_attempt); github.run_id stays the first attempt's
    action_mirror: Path | None = None
    llm: Any = None  # an llm.LLM asked for steps Smith cannot run; None: off
    artifacts: Path | None = None  # where upload-artifact keeps this run's artifacts (a host directory)
    cache: bool = False  # the jobs' guests have a cache server (GuestConfig.cache): actions/cache uses it

    @property
    def repo_name(self) -> str:
        return self.repository.split("/")[-1]

    def github(self, job: str, workspace: str, action: str = "") -> dict[str, Any]:
        ref_type = "tag" if self.ref.startswith("refs/tags/") else "branch"
        pr = self.event.get("pull_request") or {}
        api = "https://api.github.com" if self.server_url == "https://github.com" else f"{self.server_url}/api/v3"
        return {
            "action": action,
            "action_path": "",
            "actor": self.actor,
            "triggering_actor": self.actor,
            "api_url": api,
            "graphql_url": api.replace("/v3", "") + "/graphql",
            "base_ref": (pr.get("base") or {}).get("ref", "") if pr else "",
            "head_ref": (pr.get("head") or {}).get("ref", "") if pr else "",
            "event": self.event,
            "event_name": self.event_name,
            "event_path": "",
            "job": job,
            "ref": self.ref,
            "ref_name": self.ref.split("/", 2)[-1] if self.ref.startswith("refs/") else self.ref,
            "ref_type": ref_type,
            "repository": self.repository,
            "repository_owner": self.repository.split("/")[0],
            "retention_days": "90",
            "run_attempt": str(self.run_attempt),
            "run_id": str(self.run_id),
            "run_number": str(self.run_number),
            "server_url": self.server_url,
            "sha": self.sha,
            "token": self.secrets.get("GITHUB_TOKEN", ""),
            "workflow": self.workflow_name,
            "workflow_ref": f"{self.repository}/{self.workflow_file}@{self.ref}",
            "workspace": workspace,
        }


def github_env(gh: dict[str, Any]) -> dict[str, str]:
    """The GITHUB_* variables a step sees, from the github context."""
    names = (
        "action", "actor", "triggering_actor", "api_url", "graphql_url", "base_ref", "head_ref", "event_name",
        "event_path", "job", "ref", "ref_name", "ref_type", "repository", "repository_owner", "retention_days",
        "run_attempt", "run_id", "run_number", "server_url", "sha", "workflow", "workflow_ref", "workspace",
    )  # fmt: skip
    env = {f"GITHUB_{n.upper()}": str(gh.get(n, "")) for n in names}
    env["GITHUB_ACTIONS"] = "true"
    env["CI"] = "true"
    return env
