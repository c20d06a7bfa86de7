"""Does a workflow run for an event? ``on`` filters with GitHub's rules."""

from __future__ import annotations

from typing import Any

from smith.workflows.globs import matches
from smith.workflows.model import Trigger, Workflow

DEFAULT_TYPES = {
    "pull_request": ["opened", "synchronize", "reopened"],
    "pull_request_target": ["opened", "synchronize", "reopened"],
}


def triggered(workflow: Workflow, event: str, payload: dict[str, Any], changed: list[str] | None = None) -> bool:
    """Whether ``workflow`` runs for ``event`` with ``payload``; ``changed``: the paths the push/PR changed
    (None: unknown, path filters pass)."""
    trigger = workflow.on.get(event)
    if trigger is None:
        return False
    return filters_pass(trigger, event, payload, changed)


def filters_pass(t: Trigger, event: str, payload: dict[str, Any], changed: list[str] | None) -> bool:
    action = payload.get("action")
    types = t.types if t.types is not None else DEFAULT_TYPES.get(event)
    if types is not None and action is not None and action not in types:
        return False
    if event in ("push", "pull_request", "pull_request_target"):
        if event == "push":
            ref = str(payload.get("ref") or "")
        else:
            ref = "refs/heads/" + str(((payload.get("pull_request") or {}).get("base") or {}).get("ref") or "")
        is_tag = ref.startswith("refs/tags/")
        name = ref.removeprefix("refs/tags/") if is_tag else ref.removeprefix("refs/heads/")
        has_branch = t.branches is not None or t.branches_ignore is not None
        has_tag = t.tags is not None or t.tags_ignore is not None
        if is_tag:
            if has_tag:
                if t.tags is not None and not matches(name, t.tags):
                    return False
                if t.tags_ignore is not None and matches(name, t.tags_ignore):
                    return False
            elif has_branch:  # only branch filters: tag pushes do not run
                return False
        else:
            if has_branch:
                if t.branches is not None and not matches(name, t.branches):
                    return False
                if t.branches_ignore is not None and matches(name, t.branches_ignore):
                    return False
            elif has_tag:  # only tag filters: branch pushes do not run
                return False
        if changed is not None:
            if t.paths is not None and not any(matches(p, t.paths) for p in changed):
                return False
            if t.paths_ignore is not None and changed and all(matches(p, t.paths_ignore) for p in changed):
                return False
    return True
