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


def unknown_exclude_key(matrix: dict[str, Any]) -> tuple[dict[str, Any], str, str] | None:
    """An ``exclude`` entry naming a key that is none of the matrix's axes (an ``include``-only key is not one):
    the entry, the key and what GitHub says refusing the workflow; None when there is none. Entries that are not
    mappings yet (expressions) are left to the expansion."""
    exclude = matrix.get("exclude")
    for entry in exclude if isinstance(exclude, list) else []:
        for key in entry if isinstance(entry, dict) else {}:
            if key in ("include", "exclude") or key not in matrix:
                return entry, key, f"matrix exclude key {key!r} does not match any key within the matrix"
    return None


def expand(matrix: dict[str, Any], where: str = "") -> list[dict[str, Any]]:
    """The job's combinations, in GitHub's order: the product of the axes, minus excludes, then includes
    (an include extends every combination whose original values it does not overwrite, else it is added)."""
    return _expand(matrix, where)[0]


def _expand(matrix: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], int]:
    """The combinations, and how many of them come from the product (the rest an include added)."""
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
    if (unknown := unknown_exclude_key(matrix)) is not None:
        raise WorkflowError(f"{where}strategy.matrix.exclude: {unknown[2]}")
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
                combo.update({k: v for k, v in inc.items() if k not in orig})  # an original value stays as written
                added = True
        if not added:
            combos.append(dict(inc))
    if len(combos) > MAX_COMBINATIONS:
        raise WorkflowError(f"{where}strategy.matrix expands to {len(combos)} jobs; at most {MAX_COMBINATIONS}")
    return combos, base


def label(combo: dict[str, Any], keys: list[str] | None = None) -> str:
    """How GitHub names a matrix job: the values of the matrix's own keys (``keys``; every key for a
    combination an ``include`` added), objects and lists flattened to their scalar leaves, empty values left out,
    comma separated. Keys an ``include`` adds to existing combinations do not show."""
    from smith.workflows.expressions import to_str

    parts: list[str] = []

    def leaves(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                leaves(x)
        elif isinstance(v, list):
            for x in v:
                leaves(x)
        elif (text := to_str(v)) != "":
            parts.append(text)

    for k in combo if keys is None else keys:
        leaves(combo.get(k))
    return ", ".join(parts)


def named(matrix: dict[str, Any], where: str = "") -> list[tuple[dict[str, Any], str]]:
    """Each combination with the suffix GitHub names its job with: from the matrix's axes, or from all its
    values for a combination an ``include`` added."""
    combos, product = _expand(matrix, where)
    axes = [k for k in matrix if k not in ("include", "exclude")]
    return [(c, label(c, axes if i < product else None)) for i, c in enumerate(combos)]
