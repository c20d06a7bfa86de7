"""The agent's background loops survive an unexpected error: a heartbeat answer of the wrong shape does not end
the heartbeats (which would let the leases expire and the jobs run twice elsewhere)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.domain.vms import Backend, VMShape
from smith.ports import Machine


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
