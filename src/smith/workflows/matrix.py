"""``strategy.matrix`` expansion with GitHub's include/exclude rules."""

from __future__ import annotations

import itertools
from typing import Any

from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import loose_equal

MAX_COMBINATIONS = 256  # GitHub's limit per workflow run


def _matches(combo: dict[str, Any], partial: dict[str, Any]) -> bool:
    return all(k in combo and _equal(combo[k], v) for k, v in partial.items())


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(k in a and _equal(a[k], v) for k, v in b.items())
    return a == b or loose_equal(a, b)


def expand(matrix: dict[str, Any], where: str = "") -> list[dict[str, Any]]:
    """The job's combinations, in GitHub's order: the product of the axes, minus excludes, then includes
    (an include extends every combination whose original values it does not overwrite, else it is added)."""
    if not isinstance(matrix, dict):
        raise WorkflowError(f"{where}strategy.matrix must be a mapping")
    include = matrix.get("include") or []
    exclude = matrix.get("exclude") or []
    if not isinstance(include, list) or not isinstance(exclude, list):
        raise WorkflowError(f"{where}strategy.matrix include/exclude must be lists")
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    for k, v in axes.items():
        if not isinstance(v, list):
            raise WorkflowError(f"{where}strategy.matrix.{k} must be a list")
    combos: list[dict[str, Any]] = []
    if axes:
        keys = list(axes)
        combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]
    combos = [c for c in combos if not any(_matches(c, e) for e in exclude if isinstance(e, dict))]
    originals = [dict(c) for c in combos]  # only these are extended: an added combination never is
    base = len(combos)
    for inc in include:
        if not isinstance(inc, dict):
            raise WorkflowError(f"{where}strategy.matrix.include entries must be mappings")
        added = False
        for combo, orig in zip(combos[:base], originals, strict=True):
            if all(k not in orig or _equal(orig[k], v) for k, v in inc.items()):
                combo.update({k: v for k, v in inc.items()})
                added = True
        if not added:
            combos.append(dict(inc))
    if len(combos) > MAX_COMBINATIONS:
        raise WorkflowError(f"{where}strategy.matrix expands to {len(combos)} jobs; at most {MAX_COMBINATIONS}")
    return combos


def label(combo: dict[str, Any]) -> str:
    """How GitHub names a matrix job: the values, comma separated."""
    from smith.workflows.expressions import to_str

    return ", ".join(to_str(v) if not isinstance(v, dict | list) else "…" for v in combo.values())
