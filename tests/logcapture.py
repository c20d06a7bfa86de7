"""Smith's real log configuration (JSON lines), written to memory for a test and put back after."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import structlog

from smith.logging import configure


@contextlib.contextmanager
def json_lines() -> Iterator[list[dict[str, Any]]]:
    """Every line logged inside, parsed (filled in when the block ends)."""
    saved_config, saved_handlers = structlog.get_config(), logging.getLogger().handlers[:]
    buffer, stderr = io.StringIO(), sys.stderr
    lines: list[dict[str, Any]] = []
    sys.stderr = buffer  # for the whole block: Smith's logging writes to the stderr of the moment
    try:
        configure("INFO")
        yield lines
    finally:
        sys.stderr = stderr
        structlog.configure(**saved_config)
        logging.getLogger().handlers = saved_handlers
        lines += [json.loads(raw) for raw in buffer.getvalue().splitlines() if raw.startswith("{")]
