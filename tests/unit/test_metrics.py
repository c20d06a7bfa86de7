"""Metrics across worker processes: each writes to PROMETHEUS_MULTIPROC_DIR, any one's scrape sums them all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.scrape import parse, value

from smith.metrics import prepare_multiprocess

WORKER = """
from smith.control import metrics
metrics.WEBHOOKS.labels(event="workflow_job").inc({n})
"""
SCRAPE = "import sys; from smith.metrics import render; sys.stdout.write(render().decode())"


def test_workers_counters_are_summed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after the test (prepare_multiprocess sets it)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.db").write_bytes(b"left by an earlier run")
    prepare_multiprocess(tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []  # an earlier run's counts are gone
    env = dict(os.environ)
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", WORKER.format(n=n)], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, capture_output=True, text=True)
    assert value(parse(out.stdout), "smith_webhooks_received_total", event="workflow_job") == 5
