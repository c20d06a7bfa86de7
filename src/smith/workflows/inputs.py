"""``workflow_dispatch`` inputs as GitHub gives them: the ``inputs`` context holds the declared defaults overridden
by what was given, typed as declared (``boolean`` a boolean, ``number`` a number, others strings), while
``github.event.inputs`` holds every value as a string (``"true"``/``"false"``)."""

from __future__ import annotations

from typing import Any

from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import to_number, to_str
from smith.workflows.model import Trigger


def dispatch_inputs(trigger: Trigger | None, given: dict[str, Any]) -> dict[str, Any]:
    """The ``inputs`` context of a ``workflow_dispatch`` run (undeclared inputs given are kept as strings)."""
    declared = trigger.inputs if trigger is not None else {}
    out: dict[str, Any] = {k: to_str(v) for k, v in given.items() if k not in declared}
    for name, spec in declared.items():
        if name in given:
            out[name] = typed(name, spec, given[name])
        elif "default" in spec:
            out[name] = typed(name, spec, spec["default"])
    return out


def typed(name: str, spec: dict[str, Any], value: Any) -> Any:
    kind = str(spec.get("type") or "string")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = to_str(value).strip().lower()
        if text not in ("true", "false"):
            raise WorkflowError(f"workflow_dispatch input {name!r} is a boolean: 'true' or 'false', not {value!r}")
        return text == "true"
    if kind == "number":
        number = to_number(value)
        if number != number:  # NaN
            raise WorkflowError(f"workflow_dispatch input {name!r} is a number, not {value!r}")
        return number
    return to_str(value)


def event_inputs(inputs: dict[str, Any]) -> dict[str, str]:
    """``github.event.inputs``: the same values, all strings."""
    return {k: to_str(v) for k, v in inputs.items()}
