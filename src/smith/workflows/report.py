"""Live, readable output of a run on a terminal: job and step headers, groups, timings, a summary table."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from smith.workflows.executor import RunResult

MARK = {"success": "✓", "failure": "✗", "cancelled": "⊘", "skipped": "-"}


class ConsoleReporter:
    """Every line prefixed with its job (jobs run in parallel); lines inside a ``::group::`` indented under it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.in_group: dict[str, bool] = {}

    def _write(self, key: str, text: str) -> None:
        with self.lock:
            self.out.write(f"[{key}] {text}\n")
            self.out.flush()

    def job_started(self, key: str, name: str) -> None:
        self._write(key, f"▶ job {name}")

    def step_started(self, key: str, name: str) -> None:
        self.in_group[key] = False
        self._write(key, f"  ▶ {name}")

    def line(self, key: str, kind: str, text: str) -> None:
        if kind == "group":
            self.in_group[key] = True
            self._write(key, f"    ▾ {text}")
        elif kind == "endgroup":
            self.in_group[key] = False
        else:
            indent = "      " if self.in_group.get(key) else "    "
            for part in text.split("\n") or [""]:
                self._write(key, indent + part)

    def step_finished(self, key: str, name: str, conclusion: str, seconds: float) -> None:
        self.in_group[key] = False
        if conclusion == "skipped":
            self._write(key, f"  - {name} (skipped)")
            return
        self._write(key, f"  {MARK.get(conclusion, '?')} {name} [{seconds:.2f}s]")

    def job_finished(self, key: str, result: str, seconds: float) -> None:
        self._write(key, f"{MARK.get(result, '?')} job {key} {result} [{seconds:.2f}s]")


def summary_table(result: RunResult) -> str:
    rows = [("JOB", "RESULT", "TIME")]
    rows += [(j.key, j.result, f"{j.seconds:.2f}s") for j in result.jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"workflow {result.workflow}: {result.conclusion} in {result.seconds:.2f}s")
    return "\n".join(lines)
