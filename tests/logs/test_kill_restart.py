"""Kill `smith logs serve` (SIGKILL) mid-stream and start it again: the shipper's replay leaves every line of
every job stored exactly once, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from smith.agent.logship import LogShipper
from smith.testing.servers import free_port, wait_ready
from tests.logs.conftest import AGENT_SECRET, JWT_SECRET, logs_token
from tests.logs.test_logship import all_lines, line

JOBS = ("kill-a", "kill-b", "kill-c")
LINES = 3000


def start_server(port: int, data: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SMITH_DATA_DIR": str(data),
        "SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET,
        "SMITH_JWT_SECRET": JWT_SECRET,
        "SMITH_LOGS_BATCH_DELAY_SECONDS": "0.02",
        "SMITH_LOGS_BATCH_ROWS": "500",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smith", "logs", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    if wait_ready(f"http://127.0.0.1:{port}/readyz", proc):
        return proc
    proc.kill()
    raise AssertionError(f"smith logs serve did not start:\n{log.read_text()[-3000:]}")


async def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data, server_log = tmp_path / "data", tmp_path / "server.log"
    proc = await asyncio.to_thread(start_server, port, data, server_log)
    shipper = LogShipper(url, logs_token, tmp_path / "spool", batch_lines=200, max_backoff=0.3)
    await shipper.start()
    killed = False
    try:
        for i in range(1, LINES + 1):
            for job in JOBS:
                await shipper.send(job, line(f"{job} line {i}"))
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # let the flusher ship as the job runs
            if not killed and shipper.sent_lines >= 1500:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
                killed = True
                killed_at = shipper.sent_lines
        assert killed, "the pipeline was never killed mid-stream"
        await asyncio.sleep(0.5)  # lines keep spooling while it is down
        proc = await asyncio.to_thread(start_server, port, data, server_log)
        for job in JOBS:
            await shipper.send(job, line("done"))
            await shipper.close_job(job)
        assert await shipper.close(drain_seconds=90) is True
        assert shipper.sent_lines > killed_at
        for job in JOBS:
            got = await asyncio.to_thread(all_lines, url, job)
            assert [x["seq"] for x in got] == list(range(1, LINES + 3)), job
            texts = [x["line"] for x in got]
            assert texts[:LINES] == [f"{job} line {i}" for i in range(1, LINES + 1)]
            assert texts[LINES:] == ["done", "smith: output closed"] and got[-1]["last"]
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
