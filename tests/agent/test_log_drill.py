"""Drill: the log pipeline down, the agent (`smith agent run`, sandbox backend) SIGKILLed mid-job and started
again, then the pipeline started: every line the job printed before the kill arrives once, in order, followed by
the retry's lines.

"Down" here is a pipeline that takes connections and never answers (a listening socket nobody accepts on): the
shipper's first post hangs (up to its 30 s timeout), so nothing but ``send()`` itself can put the job's lines on
disk. A spool that only flushes when it ships never has them there, and the wait below fails.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.test_agent_e2e import agent_process, wait_state
from tests.control.conftest import Control, operator_token
from tests.logs.test_kill_restart import start_server
from tests.logs.test_logship import all_lines

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)")

LINES = 200
PRINTED = ["job started", *(f"line {i}" for i in range(1, LINES + 1))]


async def spooled(path: Path, count: int, timeout: float = 20) -> None:
    """Wait until the spool file on disk holds ``count`` copies of the job's last printed line."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(f'"line {LINES}"'.encode()) >= count):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never held line {LINES} {count} time(s)")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_agent_killed_with_the_pipeline_down_loses_and_doubles_no_line(
    control_factory: Callable[..., Control], tmp_path: Path
) -> None:
    control = control_factory(lease_ttl_seconds=300)  # the restart releases the lease, not the TTL
    hung = socket.create_server(("127.0.0.1", 0), backlog=128)  # takes connections, never answers
    port = hung.getsockname()[1]
    env = {"SMITH_LOGS_URL": f"http://127.0.0.1:{port}"}
    work = tmp_path / "agent"
    with control.client(operator_token()) as c:
        run = f"for i in $(seq 1 {LINES}); do echo line $i; done; sleep 600"
        job = c.post("/v1/jobs", json={"run": run, "labels": ["smith-2vcpu"]}).json()
    spool_file = work / "log-spool" / job["id"] / "lines.ndjson"
    first = agent_process(control, work, env)
    try:
        await wait_state(control, job["id"], {"running"}, timeout=60)
        await spooled(spool_file, 1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = agent_process(control, work, env)
    proc = None
    try:
        await wait_state(control, job["id"], {"running"}, timeout=60, attempts=2)
        await spooled(spool_file, 2)
        hung.close()  # the pipeline comes up on the same port
        proc = await asyncio.to_thread(start_server, port, tmp_path / "logs-data", tmp_path / "logs.log")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while len(await asyncio.to_thread(all_lines, url, job["id"])) < 2 * len(PRINTED):
            assert time.monotonic() < deadline, "the spooled lines never reached the pipeline"
            await asyncio.sleep(0.2)
        second.send_signal(signal.SIGTERM)  # drain: the retry is stopped, its last lines shipped
        out, _ = second.communicate(timeout=90)
        assert second.returncode == 0, out
        got = await asyncio.to_thread(all_lines, url, job["id"])
    finally:
        hung.close()
        if second.poll() is None:
            second.kill()
        if proc is not None:
            proc.terminate()
            proc.wait(20)
    assert [x["seq"] for x in got] == list(range(1, len(got) + 1))  # each line once, in order
    texts = [x["line"] for x in got]
    assert texts[: 2 * len(PRINTED)] == PRINTED + PRINTED  # the killed attempt's lines, then the retry's
    assert got[-1]["last"]
