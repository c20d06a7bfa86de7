"""`smith dev`: the control plane on embedded Valkey, with no set-up, and a restart that loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from smith.adapters.redis.embedded import free_port
from tests.control.conftest import queued_payload, signed


def start_dev(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env["SMITH_DATA_DIR"] = str(data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "smith", "dev", "--port", str(port), "--only-control"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"smith dev exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("smith dev did not become ready")


def stop_dev(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return out.decode()


@pytest.mark.slow
def test_smith_dev_runs_with_no_setup_and_restarts_without_loss(tmp_path: Path) -> None:
    port = free_port()
    proc = start_dev(tmp_path, port)
    try:
        secrets = json.loads((tmp_path / "dev-secrets.json").read_text())
        assert oct((tmp_path / "dev-secrets.json").stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / "valkey" / "appendonlydir").exists()  # AOF is on
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200  # API docs: on in smith dev
        body = orjson.dumps(queued_payload(7001))
        headers = signed(body, secret=secrets["SMITH_GITHUB_WEBHOOK_SECRET"])
        r = httpx.post(f"http://127.0.0.1:{port}/webhooks/github", content=body, headers=headers)
        assert r.status_code == 202 and r.json()["outcome"] == "queued"
    finally:
        out = stop_dev(proc)
    assert proc.returncode == 0, out
    assert "smith dev stopped" in out
    # The private Valkey went down with it.
    assert not (tmp_path / "valkey" / "valkey.sock").exists() or not _answers(tmp_path / "valkey" / "valkey.sock")
    proc = start_dev(tmp_path, port)
    try:
        env = {**os.environ, "SMITH_DATA_DIR": str(tmp_path), "SMITH_PORT": str(port)}
        env.pop("SMITH_CONTROL_URL", None)
        out = subprocess.run(
            [sys.executable, "-m", "smith", "jobs", "show", "7001", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out)["state"] == "queued"  # survived the restart; the CLI found dev's URL and secret
    finally:
        stop_dev(proc)


def _answers(sock: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("bwrap") is None, reason="bwrap is not installed")
def test_quick_start_smith_dev_runs_a_job_end_to_end(tmp_path: Path) -> None:
    """The README's quick start: `smith dev`, then `smith jobs submit`; the job runs on this machine."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env.update(
        {
            "SMITH_DATA_DIR": str(tmp_path),
            "SMITH_CACHE_PORT": str(free_port()),
            "SMITH_PORT": str(port),
            "SMITH_LOGS_PORT": str(free_port()),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smith", "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with __import__("contextlib").suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-m", "smith", "jobs", "submit", "echo hello from smith", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        job_id = json.loads(out)["id"]
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline and state not in ("succeeded", "failed"):
            shown = subprocess.run(
                [sys.executable, "-m", "smith", "jobs", "show", job_id, "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            state = json.loads(shown)["state"]
            time.sleep(0.2)
        assert state == "succeeded"
        log = (tmp_path / "agent" / "logs" / f"{job_id}.ndjson").read_text()
        assert "hello from smith" in log
        # ...and the same line is in the log pipeline (ClickHouse in-process), readable with `smith logs`.
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline and "hello from smith" not in lines:
            got = subprocess.run(
                [sys.executable, "-m", "smith", "logs", "--job-id", job_id, "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            if got.returncode == 0:
                lines = [row["line"] for row in json.loads(got.stdout)["lines"]]
            time.sleep(0.3)
        assert "hello from smith" in lines
    finally:
        out = stop_dev(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
