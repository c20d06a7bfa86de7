"""`smith control serve --workers 2`: every scrape, whichever worker answers it, counts every worker's webhooks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from smith.adapters.redis.embedded import free_port
from tests.control.conftest import control_env, queued_payload, signed
from tests.scrape import scrape, value


@pytest.mark.slow
def test_two_workers_sum_their_counters(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = control_env(redis_url, tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-m", "smith", "control", "serve", "--port", str(port), "--workers", "2"], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # two worker processes importing on a loaded machine
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.1)
        before = value(scrape(url), "smith_webhooks_received_total", event="workflow_job")
        for i in range(20):  # a new connection each: the kernel spreads them over both workers
            body = orjson.dumps(queued_payload(14000 + i))
            assert httpx.post(url + "/webhooks/github", content=body, headers=signed(body)).status_code == 202
        for _ in range(6):
            got = value(scrape(url), "smith_webhooks_received_total", event="workflow_job")
            assert got - before == 20
        assert any((tmp_path / "metrics").rglob("*.db"))  # the workers' files, under SMITH_DATA_DIR
    finally:
        server.terminate()
        server.wait(30)
