"""The agent's background loops survive an unexpected error: a heartbeat answer of the wrong shape does not end
the heartbeats (which would let the leases expire and the jobs run twice elsewhere); a job the agent cannot
handle is reported failed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logship import LogShipper
from smith.agent.logsink import LocalFiles
from smith.domain.vms import Backend, VMShape
from smith.ports import Machine
from smith.testing.servers import free_port
from smith.wire.guest import GuestEvent
from tests.agent.onejob import OneJob, ScriptedVMs, job


class NoVMs:
    backend = Backend.SANDBOX

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        raise AssertionError("no VM is booted in this test")

    async def cleanup_leftovers(self) -> list[str]:
        return []


async def test_a_heartbeat_answer_of_the_wrong_shape_does_not_stop_the_heartbeats(tmp_path: Path) -> None:
    heartbeats: list[int] = []
    second = asyncio.Event()

    async def control_plane(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agents/register":
            body = {"agent_id": "h", "heartbeat_interval_seconds": 0.01, "lease_ttl_seconds": 30, "runner_classes": []}
            return httpx.Response(200, json=body)
        if request.url.path == "/v1/agents/heartbeat":
            heartbeats.append(1)
            if len(heartbeats) == 1:
                return httpx.Response(200, json={"jobs": ["not", "a", "mapping"]})
            second.set()
            return httpx.Response(200, json={"jobs": {}})
        await asyncio.sleep(0.05)  # lease: nothing to do
        return httpx.Response(204)

    control = ControlClient("http://control", "t", transport=httpx.MockTransport(control_plane))
    config = AgentConfig(agent_id="h", hostname="h", vcpus=2, memory_mib=1024, max_vms=1, drain_seconds=1)
    agent = Agent(config, control, NoVMs(), LocalFiles(tmp_path / "logs"))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(second.wait(), 30)
    finally:
        await agent.shutdown()
        await task
    assert len(heartbeats) >= 2


async def test_a_job_the_agent_cannot_handle_is_reported_failed_not_left_running(tmp_path: Path) -> None:
    """A job id the log spool cannot name a directory after (``-5``) once crashed the job's task: the job stayed
    'running' until its lease expired, then ran again elsewhere."""
    one = OneJob(job("-5"))
    hello = [
        GuestEvent(type="line", ts=time.time(), stream="stdout", line="hello"),
        GuestEvent(type="exit", ts=time.time(), exit_code=0),
    ]
    agent = await one.run(ScriptedVMs(hello), LogShipper(f"http://127.0.0.1:{free_port()}", "t", tmp_path / "spool"))
    reports = one.reports
    assert reports["failed"]["reason"].startswith("agent error: ValueError")  # type: ignore[union-attr]
    assert not agent.jobs and agent.ledger.used_vms == 0
