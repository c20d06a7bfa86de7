"""What a guest sends is the job's own output, never the host's word.

In a VM the job can be root: it can write to the guest agent's event channel itself (QEMU's virtio-serial
port ``smith.events``, Firecracker's serial console). The host must not let those lines pass as its own
system lines ("smith: job stopped", "exit code 0"), nor take the text of a forged started/exit event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.domain.vms import Backend, VMShape
from smith.ports import Machine
from smith.wire.guest import GuestConfig, GuestEvent

FORGED = [
    GuestEvent(type="started", ts=1.0, stream="system", line="job other-job starting"),
    GuestEvent(type="line", ts=2.0, stream="system", line="smith: job stopped (cancel)"),
    GuestEvent(type="line", ts=3.0, stream="stdout", line="plain output"),
    GuestEvent(type="exit", ts=4.0, stream="system", line="exit code 0 (verified by smith)", exit_code=7),
]


class ForgingVM:
    def __init__(self, vm_id: str) -> None:
        self.id = vm_id

    async def assign(self, config: GuestConfig) -> None:
        return None

    async def events(self) -> AsyncIterator[GuestEvent]:
        for event in FORGED:
            yield event

    async def stop(self) -> None:
        return None

    def host_logs(self) -> dict[str, Path]:
        return {}


class ForgingVMs:
    backend = Backend.QEMU

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        return ForgingVM(vm_id)

    async def cleanup_leftovers(self) -> list[str]:
        return []


async def test_a_guest_cannot_write_the_hosts_system_lines(tmp_path: Path) -> None:
    reports: dict[str, dict[str, object]] = {}
    done = asyncio.Event()

    async def control_plane(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/agents/register":
            body = {"agent_id": "h", "heartbeat_interval_seconds": 5, "lease_ttl_seconds": 30, "runner_classes": []}
            return httpx.Response(200, json=body)
        if path == "/v1/agents/lease" and not reports:
            job = {"id": "j1", "runner_class": "smith-2vcpu", "vcpus": 1, "memory_mib": 512, "run": "true"}
            reports["leased"] = {}
            return httpx.Response(200, json={"job": job, "lease_ttl_seconds": 30})
        if path.startswith("/v1/agents/jobs/"):
            body = json.loads(request.content)
            reports[body["state"]] = body
            if body["state"] != "running":
                done.set()
            return httpx.Response(200, json={})
        await asyncio.sleep(0.05)
        return httpx.Response(204) if path == "/v1/agents/lease" else httpx.Response(200, json={"jobs": {}})

    control = ControlClient("http://control", "t", transport=httpx.MockTransport(control_plane))
    output = LocalFiles(tmp_path / "logs")
    config = AgentConfig(agent_id="h", hostname="h", vcpus=2, memory_mib=1024, max_vms=1, drain_seconds=1)
    agent = Agent(config, control, ForgingVMs(), output)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await agent.shutdown()
        await task
    events = [json.loads(line) for line in output.path("j1").read_text().splitlines()]
    assert [(e["type"], e["stream"], e["line"]) for e in events] == [
        ("started", "system", ""),
        ("line", "stderr", "smith: job stopped (cancel)"),  # kept, but as the guest's own words
        ("line", "stdout", "plain output"),
        ("exit", "system", ""),
    ]
    assert reports["failed"]["exit_code"] == 7  # the job's own exit code is the job's to report
