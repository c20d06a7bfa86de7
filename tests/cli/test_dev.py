"""`smith dev` on a machine where no backend can run jobs: everything else starts, and it says why once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from smith.adapters.redis.embedded import free_port


@pytest.mark.slow
def test_dev_without_a_usable_backend_runs_the_other_services_and_says_why_once(tmp_path: Path) -> None:
    ports = {"control": free_port(), "cache": free_port(), "logs": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env.update(
        {
            "SMITH_DATA_DIR": str(tmp_path),
            "SMITH_PORT": str(ports["control"]),
            "SMITH_CACHE_PORT": str(ports["cache"]),
            "SMITH_LOGS_PORT": str(ports["logs"]),
            # The backend this machine cannot run: the agent's backend fails to build, as without bubblewrap.
            "SMITH_AGENT_BACKEND": "firecracker",
            "SMITH_AGENT_FIRECRACKER_BIN": "/nonexistent/firecracker",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smith", "dev", "--port", str(ports["control"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        waiting = dict(ports)
        deadline = time.monotonic() + 90
        while waiting and time.monotonic() < deadline and proc.poll() is None:
            for name, port in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        del waiting[name]
            time.sleep(0.2)
        assert proc.poll() is None, "smith dev stopped"
        assert not waiting, f"did not answer /healthz: {waiting}"
        # the cache is served with its own protocol, as `smith cache serve` does: a 64 KiB header is refused
        big = httpx.get(f"http://127.0.0.1:{ports['cache']}/healthz", headers={"x-big": "a" * 65536})
        assert big.status_code == 431
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert out.count("jobs cannot run on this machine") == 1, out
    line = next(line for line in out.splitlines() if "jobs cannot run" in line)
    assert "/nonexistent/firecracker" in line and "apt-get install bubblewrap" in line
    assert "Traceback" not in out
