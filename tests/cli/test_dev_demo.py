"""`smith dev --demo`: a signed webhook for the bundled example, followed from queued to done with its log lines
and a summary, on this machine's sandbox backend."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smith.adapters.redis.embedded import free_port

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (shutil.which("bwrap") or shutil.which("unshare")), reason="needs bwrap or unshare")
def test_dev_demo_follows_the_example_job_to_the_end(tmp_path: Path) -> None:
    ports = {"control": free_port(), "cache": free_port(), "logs": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env.update(
        {
            "SMITH_DATA_DIR": str(tmp_path),
            "SMITH_CACHE_PORT": str(ports["cache"]),
            "SMITH_LOGS_PORT": str(ports["logs"]),
            "SMITH_AGENT_BACKEND": "sandbox",
            "SMITH_LOG_LEVEL": "WARNING",
            "COLUMNS": "120",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smith", "dev", "--demo", "--port", str(ports["control"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "log volume per job" in line or "logs: unavailable" in line:  # the overview's last section
                done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done.wait(120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    text = "".join(out)
    assert done.is_set(), text
    assert proc.returncode == 0, text
    assert "202 queued" in text
    states = [line.split()[3] for line in out if line.startswith("demo: job ")]
    assert states[0] == "queued" and states[-1] == "succeeded", states
    log = [line.removeprefix("demo: | ").rstrip("\n") for line in out if line.startswith("demo: | ")]
    assert log[1].startswith("Hello from Smith's demo job") and "all steps passed" in log
    rows = {cells[1].strip(): cells[2].strip() for line in out if len(cells := line.split("│")) == 4}
    assert rows["state"] == "succeeded" and rows["exit code"] == "0"
    assert rows["log lines"] == str(len(log))
    assert "Traceback" not in text
    overview = text[text.index("the report overview") :]
    assert "unavailable" not in overview, overview  # the control plane, the cache and the logs all answered
    assert "hosts" in overview and "log volume per job" in overview
