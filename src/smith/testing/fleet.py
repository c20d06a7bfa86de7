"""A control plane and several host agents in this process, the agents on instant in-process VMs.

The control plane is the real app under uvicorn (a thread) against a real Redis; each agent is the real daemon
talking to it over HTTP. Only the VMs are stand-ins (``InstantVMs``): a VM boots at once and its guest prints one
line and exits 0, so what is measured or traced is Smith's own path (webhook, queue, lease, reports), not a
kernel's boot. For tests (tracing, metrics) and ``bench/e2e.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smith import tokens
from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.control.app import create_app
from smith.control.settings import ControlSettings
from smith.domain.vms import Backend, VMShape
from smith.ports import Machine
from smith.testing.servers import ThreadedServer
from smith.wire.guest import GuestConfig, GuestEvent

WEBHOOK_SECRET = "fleet-webhook-secret"
AGENT_SECRET = "fleet-agent-secret-0123456789abcdef"
OPERATOR_SECRET = "fleet-operator-secret-0123456789abcdef"


class InstantVM:
    """Boots at once; its guest says one line and exits once it has its job: 0, or N for a script job whose
    script is ``exit N`` (a failure, for tests)."""

    def __init__(self, vm_id: str) -> None:
        self.id = vm_id
        self.job_id = ""
        self.exit_code = 0

    async def assign(self, config: GuestConfig) -> None:
        self.job_id = config.job.id
        word, _, code = config.job.run.strip().partition(" ")
        if word == "exit" and code.isdigit():
            self.exit_code = int(code)

    async def events(self) -> AsyncIterator[GuestEvent]:
        now = time.time()
        yield GuestEvent(type="started", ts=now)
        yield GuestEvent(type="line", ts=now, line=f"hello from {self.job_id}")
        yield GuestEvent(type="exit", ts=now, exit_code=self.exit_code)

    async def stop(self) -> None:
        return None

    def host_logs(self) -> dict[str, Path]:
        return {}


class InstantVMs:
    backend = Backend.SANDBOX

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        await asyncio.sleep(0)
        return InstantVM(vm_id)

    async def cleanup_leftovers(self) -> list[str]:
        return []


@dataclass
class Fleet:
    url: str
    settings: ControlSettings
    agents: list[Agent]

    def operator_token(self) -> str:
        return tokens.mint(OPERATOR_SECRET, scope="operator", subject="fleet", ttl_seconds=3600)

    def signed_headers(self, body: bytes, delivery: str, event: str = "workflow_job") -> dict[str, str]:
        return {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": tokens.github_signature(WEBHOOK_SECRET.encode(), body),
            "Content-Type": "application/json",
        }


@contextlib.asynccontextmanager
async def fleet(
    redis_url: str, work_dir: Path, *, agents: int = 2, vms_per_agent: int = 8, **settings: Any
) -> AsyncIterator[Fleet]:
    """The control plane on a free port and ``agents`` agents (``fleet-0``...), registered; all stopped after."""
    control_settings = ControlSettings(
        redis_url=redis_url,
        github_webhook_secret=WEBHOOK_SECRET,
        agent_token_secret=AGENT_SECRET,
        jwt_secret=OPERATOR_SECRET,
        **settings,
    )
    srv = ThreadedServer(create_app(control_settings))
    srv.start()
    running: list[tuple[Agent, asyncio.Task[None]]] = []
    try:
        for i in range(agents):
            agent_id = f"fleet-{i}"
            token = tokens.mint(AGENT_SECRET, scope="agent", subject=agent_id, ttl_seconds=3600, agent_id=agent_id)
            config = AgentConfig(
                agent_id=agent_id,
                hostname=agent_id,
                vcpus=2 * vms_per_agent,
                memory_mib=4096 * vms_per_agent,
                max_vms=vms_per_agent,
                drain_seconds=5,
                lease_wait_seconds=5,
            )
            agent = Agent(config, ControlClient(srv.url, token), InstantVMs(), LocalFiles(work_dir / agent_id))
            running.append((agent, asyncio.create_task(agent.run())))
            await asyncio.wait_for(agent.registered.wait(), 30)
        yield Fleet(srv.url, control_settings, [a for a, _ in running])
    finally:
        for agent, task in running:
            await agent.shutdown()
            await task
        srv.stop()
