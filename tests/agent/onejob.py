"""A control plane that hands an agent one job and records what the agent reports (httpx.MockTransport), and a
backend whose VMs replay a fixed list of guest events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import JobOutput
from smith.domain.vms import Backend, VMShape
from smith.ports import VMM, Machine
from smith.wire.guest import GuestConfig, GuestEvent


@dataclass
class OneJob:
    """Leases ``job`` once; ``reports`` holds the agent's reports by state; ``done`` is set by a final one."""

    job: dict[str, Any]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    leased: bool = False
    agent: Agent | None = None  # while it runs

    async def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/agents/register":
            body = {"agent_id": "h", "heartbeat_interval_seconds": 5, "lease_ttl_seconds": 30, "runner_classes": []}
            return httpx.Response(200, json=body)
        if path == "/v1/agents/lease" and not self.leased:
            self.leased = True
            return httpx.Response(200, json={"job": self.job, "lease_ttl_seconds": 30})
        if path.startswith("/v1/agents/jobs/"):
            body = json.loads(request.content)
            self.reports[body["state"]] = body
            if body["state"] != "running":
                self.done.set()
            return httpx.Response(200, json={})
        await asyncio.sleep(0.05)
        return httpx.Response(204) if path == "/v1/agents/lease" else httpx.Response(200, json={"jobs": {}})

    async def run(self, vmm: VMM, output: JobOutput, **config_fields: Any) -> Agent:
        """An agent on ``vmm`` and ``output`` (and any other ``AgentConfig`` fields) until the job's final report;
        returns it, shut down."""
        control = ControlClient("http://control", "t", transport=httpx.MockTransport(self.answer))
        config = AgentConfig(
            agent_id="h", hostname="h", vcpus=2, memory_mib=1024, max_vms=1, drain_seconds=1, **config_fields
        )
        agent = self.agent = Agent(config, control, vmm, output)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(self.done.wait(), 30)
        finally:
            await agent.shutdown()
            await task
        return agent


def job(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "runner_class": "smith-2vcpu", "vcpus": 1, "memory_mib": 512, "run": "true"}


class ScriptedVM:
    """A VM whose guest says ``events`` and nothing else."""

    def __init__(self, vm_id: str, events: Sequence[GuestEvent]) -> None:
        self.id = vm_id
        self._events = list(events)

    async def assign(self, config: GuestConfig) -> None:
        return None

    async def events(self) -> AsyncIterator[GuestEvent]:
        for event in self._events:
            yield event

    async def stop(self) -> None:
        return None

    def host_logs(self) -> dict[str, Path]:
        return {}


class ScriptedVMs:
    """A backend of :class:`ScriptedVM`s, each replaying ``events``."""

    def __init__(self, events: Sequence[GuestEvent], backend: Backend = Backend.SANDBOX) -> None:
        self.events, self.backend = list(events), backend

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        return ScriptedVM(vm_id, self.events)

    async def cleanup_leftovers(self) -> list[str]:
        return []
