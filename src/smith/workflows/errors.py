"""The executor's errors: all ``WorkflowError`` (a ``SmithError``), each saying where when it knows."""

from __future__ import annotations

from smith.errors import InvalidInput


class WorkflowError(InvalidInput):
    """An invalid workflow or action: the file, the line and what is wrong."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None) -> None:
        where = file + (f":{line}" if line else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.line = line
        self.what = message


class ExpressionError(WorkflowError):
    """An expression that does not parse or cannot be evaluated."""
