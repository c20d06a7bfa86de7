"""Structured JSON logs through structlog.

``configure(level)`` is called once by each composition root. Values of keys that look like secrets are
redacted by a processor, so a token passed by mistake never reaches a log line.

Context (``job_id``, ``agent_id``, ``vm_id``) is bound once where it becomes known (``bind``, ``bound``) and
travels with the task through contextvars: every line logged in it, by Smith or by a library, carries it. A task
started from a bound one inherits the context; binding inside a task never leaks to its parent.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "jitconfig", "jit_config", "private_key")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "***"
    return event


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured: a CLI run inside a
    test runner (or any caller that swaps stderr and closes its copy) must not leave later lines writing to a
    closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "INFO", *, json: bool = True) -> None:
    """Route structlog and the standard library's logging to stderr as one JSON object per line."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def bind(**fields: Any) -> None:
    """Add ``fields`` (those not None) to every later line of this task (and of tasks it starts)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """``fields`` on every line logged inside the block."""
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in fields.items() if v is not None}):
        yield
