"""bench/e2e.py runs (a small N) and its queue-wait figures from /metrics agree with the job records; and the
histogram quantile it uses estimates as Prometheus does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smith.metrics import histogram_quantile

ROOT = Path(__file__).resolve().parents[2]


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(1.0, 10.0), (2.0, 30.0), (5.0, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(1.5)  # rank 20: halfway through (1, 2]
    assert histogram_quantile(buckets, 0.25) == pytest.approx(1.0)
    assert histogram_quantile(buckets, 0.1) == pytest.approx(0.4)
    assert histogram_quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert histogram_quantile([(1.0, 1.0), (float("inf"), 3.0)], 0.9) == 1.0  # in +Inf: the last finite bound


@pytest.mark.slow
def test_bench_e2e_small_run_agrees_with_records() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), "--jobs", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r["succeeded"] == 20 and r["checked_against_records"] and r["queue_wait_metric"]["count"] == 20
    assert sum(r["per_agent"].values()) == 20 and r["jobs_per_second"] > 0
