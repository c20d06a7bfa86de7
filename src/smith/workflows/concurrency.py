"""A workflow's ``concurrency`` evaluated for one run: its group and ``cancel-in-progress``, GitHub's way (the
group may use the ``github``, ``inputs`` and ``vars`` contexts; a bare string is the group)."""

from __future__ import annotations

from typing import Any

from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import Scope, interpolate_tree, to_str, truthy


def concurrency_of(value: Any, contexts: dict[str, Any]) -> tuple[str, bool] | None:
    """(group, cancel-in-progress), or None without ``concurrency``; raises ``WorkflowError`` when it is wrong."""
    if value is None:
        return None
    scope = Scope(contexts)
    if isinstance(value, dict):
        if "group" not in value:
            raise WorkflowError("concurrency: 'group' is required")
        group = to_str(interpolate_tree(value["group"], scope))
        cancel = truthy(interpolate_tree(value.get("cancel-in-progress", False), scope))
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        group, cancel = to_str(interpolate_tree(value, scope)), False
    else:
        raise WorkflowError("concurrency must be a group name or a mapping with 'group' and 'cancel-in-progress'")
    if not group.strip():
        raise WorkflowError("concurrency: the group evaluates to an empty string")
    return group, cancel
