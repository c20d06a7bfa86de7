"""What ``smith run`` knows about a local repository: its name, commit and ref (from git when it is a git
checkout), the event payload, and which of its workflow files to run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from smith.adapters.childenv import minimal_env
from smith.workflows.context import RunInfo
from smith.workflows.errors import WorkflowError
from smith.workflows.inputs import dispatch_inputs, event_inputs
from smith.workflows.model import Workflow
from smith.workflows.parser import parse_file
from smith.workflows.triggers import triggered


def git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, env=minimal_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def repository_name(repo: Path) -> str:
    url = git(repo, "config", "--get", "remote.origin.url")
    m = re.search(r"[:/]([^/:]+)/([^/]+?)(?:\.git)?/?$", url)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return f"local/{repo.resolve().name or 'repo'}"


def find_workflows(repo: Path, given: Path | None) -> list[Path]:
    if given is not None:
        for candidate in (given, repo / given):
            if candidate.is_file():
                return [candidate.resolve()]
        raise WorkflowError(f"no workflow file {given} (looked in the current directory and in {repo})")
    folder = repo / ".github" / "workflows"
    found = sorted(p for p in folder.glob("*") if p.suffix in (".yml", ".yaml"))
    if not found:
        raise WorkflowError(f"no workflow files in {folder}; name one with --workflow")
    return found


def display_path(path: Path, repo: Path) -> str:
    try:
        return str(path.relative_to(repo.resolve()))
    except ValueError:
        return str(path)


def run_info(
    repo: Path,
    workflow: Workflow,
    event_name: str,
    event: dict[str, Any] | None,
    *,
    secrets: dict[str, str],
    vars_: dict[str, str],
    inputs: dict[str, str],
    action_mirror: Path | None,
) -> RunInfo:
    payload, sha, ref = default_event(repo, event_name, event)
    repository = payload["repository"]["full_name"]
    declared = workflow.on.get("workflow_dispatch")
    all_inputs: dict[str, Any] = {}
    if event_name == "workflow_dispatch":  # other events have no inputs
        for name, spec in (declared.inputs if declared is not None else {}).items():
            if "default" not in spec and spec.get("required") and name not in inputs:
                raise WorkflowError(f"workflow_dispatch input {name!r} is required: pass --input {name}=VALUE")
        all_inputs = dispatch_inputs(declared, inputs)
        payload.setdefault("inputs", event_inputs(all_inputs))
    return RunInfo(
        repo_dir=repo.resolve(),
        repository=repository,
        event_name=event_name,
        event=payload,
        sha=sha,
        ref=ref,
        workflow_name=workflow.name,
        workflow_file=workflow.file,
        secrets=secrets,
        vars=vars_,
        inputs=all_inputs,
        action_mirror=action_mirror,
    )


def default_event(repo: Path, event_name: str, event: dict[str, Any] | None) -> tuple[dict[str, Any], str, str]:
    """The payload (what --eventpath gave, completed from git the way GitHub would send it), the sha, the ref."""
    repository = repository_name(repo)
    sha = git(repo, "rev-parse", "HEAD") or "0" * 40
    ref = git(repo, "symbolic-ref", "-q", "HEAD") or "refs/heads/main"
    payload = dict(event or {})
    owner, name = repository.split("/", 1)
    default_branch = git(repo, "symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD").split("/", 1)[-1]
    payload.setdefault(
        "repository",
        {
            "full_name": repository,
            "name": name,
            "owner": {"login": owner},
            "default_branch": default_branch or "main",
            "html_url": f"https://github.com/{repository}",
        },
    )
    payload.setdefault("sender", {"login": "smith"})
    if event_name == "push":
        payload.setdefault("ref", ref)
        payload.setdefault("after", sha)
        payload.setdefault("head_commit", head_commit(repo, sha))
    if event_name in ("pull_request", "pull_request_target"):
        number = payload.setdefault("number", 1)
        payload.setdefault("action", "opened")
        payload.setdefault(
            "pull_request",
            {
                "number": number,
                "title": head_commit(repo, sha)["message"].split("\n")[0],
                "user": {"login": "smith"},
                "draft": False,
                "labels": [],
                "head": {"ref": ref.split("/", 2)[-1], "sha": sha, "repo": {"full_name": repository}},
                "base": {"ref": default_branch or "main", "repo": {"full_name": repository}},
            },
        )
        ref = f"refs/pull/{number}/merge"
    elif isinstance(payload.get("ref"), str):
        ref = payload["ref"]
    return payload, sha, ref


def head_commit(repo: Path, sha: str) -> dict[str, Any]:
    """The ``head_commit`` of a push payload, from git."""
    fields = git(repo, "log", "-1", "--format=%aI%x00%an%x00%ae%x00%B", sha).split("\0", 3)
    if len(fields) < 4:
        return {"id": sha, "message": "", "timestamp": "", "author": {"name": "", "email": ""}}
    when, name, email, message = fields
    return {"id": sha, "message": message.strip(), "timestamp": when, "author": {"name": name, "email": email}}


def read_event(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"cannot read the event payload {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(f"the event payload {path} must be a JSON object")
    return data


def selected(
    workflows: list[Path], repo: Path, event_name: str, event: dict[str, Any] | None, explicit: bool
) -> list[Workflow]:
    """The parsed workflows to run: the one named, or every one whose ``on`` takes the event."""
    out = []
    payload = default_event(repo, event_name, event)[0]
    changes = changed_paths(repo, event_name, payload)
    for path in workflows:
        wf = parse_file(path, display_path(path, repo))
        if explicit and event_name not in wf.on:
            raise WorkflowError(f"{wf.file} does not run on {event_name} (on: {', '.join(wf.on)}); pass --event")
        if explicit or triggered(wf, event_name, payload, changes):
            out.append(wf)
    return out


ZERO = "0" * 40


def changed_paths(repo: Path, event_name: str, payload: dict[str, Any]) -> list[str] | None:
    """The files the event changed, for ``paths`` filters: a push's ``before..after``, a pull request's
    ``base.sha...head.sha``, from the repository's git; None when git cannot say (the filters then pass)."""
    if event_name == "push":
        before, after = str(payload.get("before") or ""), str(payload.get("after") or "")
        if not before or before == ZERO or not after:
            return None
        span = f"{before}..{after}"
    elif event_name in ("pull_request", "pull_request_target"):
        pr = payload.get("pull_request") or {}
        base, head = (pr.get("base") or {}).get("sha"), (pr.get("head") or {}).get("sha")
        if not base or not head:
            return None
        span = f"{base}...{head}"
    else:
        return None
    out = git(repo, "diff", "--name-only", span)
    if not out and not git(repo, "rev-parse", "--verify", "-q", span.split(".")[0]):
        return None  # a commit git does not have
    return [line for line in out.splitlines() if line]
