"""The repositories configured for built-in workflow execution (SMITH_WORKFLOW_REPOS: a YAML or JSON file).

repositories:
  - repository: octo/app          # owner/name, as webhooks name it
    source: /srv/git/app.git      # a local git directory, or a clone URL the control plane and agents reach
    labels: [self-hosted]         # the runner class for jobs whose runs-on matches none (ubuntu-latest ...)
    installation_id: 123          # optional: the GitHub App installation for commit statuses
    secrets: {TOKEN: "..."}
    vars: {REGION: eu}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from smith.errors import ConfigError


@dataclass(frozen=True)
class RepoConfig:
    repository: str
    source: str
    labels: tuple[str, ...] = ("self-hosted",)
    installation_id: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)


def load_repos(path: Path | None) -> dict[str, RepoConfig]:
    """Repository full name (lower case) -> its config; {} without a file."""
    if path is None:
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"SMITH_WORKFLOW_REPOS: cannot read {path}: {exc}") from exc
    entries = doc.get("repositories") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ConfigError(f"SMITH_WORKFLOW_REPOS: {path} must hold a list 'repositories'")
    out: dict[str, RepoConfig] = {}
    for i, e in enumerate(entries):
        where = f"SMITH_WORKFLOW_REPOS: {path}: entry {i + 1}"
        if not isinstance(e, dict) or not isinstance(e.get("repository"), str) or "/" not in e["repository"]:
            raise ConfigError(f"{where}: 'repository' must be owner/name")
        if not isinstance(e.get("source"), str) or not e["source"]:
            raise ConfigError(f"{where}: 'source' (a local git directory or clone URL) is required")
        secrets, vars_ = e.get("secrets") or {}, e.get("vars") or {}
        if not isinstance(secrets, dict) or not isinstance(vars_, dict):
            raise ConfigError(f"{where}: 'secrets' and 'vars' must be mappings")
        labels = e.get("labels") or ["self-hosted"]
        out[e["repository"].lower()] = RepoConfig(
            repository=e["repository"],
            source=e["source"],
            labels=tuple(str(x) for x in labels),
            installation_id=int(e.get("installation_id") or 0),
            secrets={str(k): str(v) for k, v in secrets.items()},
            vars={str(k): str(v) for k, v in vars_.items()},
        )
    return out
