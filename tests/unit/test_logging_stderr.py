"""Logging writes to whatever stderr is at the time of the line: a caller that configured logging while stderr
was swapped for a buffer it later closed (a CLI run inside a test runner) must not break every later log line."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from smith import logging as smith_logging


def test_lines_go_to_the_current_stderr_after_the_swapped_one_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    smith_logging.configure("INFO", json=True)
    smith_logging.get_logger("test").info("while swapped")
    assert "while swapped" in swapped.getvalue()
    swapped.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    smith_logging.get_logger("test").error("after the close", detail=1)  # raised ValueError before
    logging.getLogger("some.library").warning("a library line")
    assert "after the close" in now.getvalue() and "a library line" in now.getvalue()
