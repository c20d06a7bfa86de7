"""Run the real `smith` command line in a subprocess, with only the SMITH_* settings a test gives."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_smith(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    """`python -m smith ARGS` with this environment minus every SMITH_* variable, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    base["SMITH_DATA_DIR"] = os.environ["SMITH_DATA_DIR"]  # the test's private data dir (tests/conftest.py)
    proc = subprocess.run(
        [sys.executable, "-m", "smith", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exactly one line on stderr, `smith: error: ...`, naming each needle; no traceback; a non-zero exit."""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("smith: error: "), result.err
    assert "Traceback" not in result.err + result.out
    assert result.code != 0
    for needle in needles:
        assert needle in lines[0]
    return lines[0]
