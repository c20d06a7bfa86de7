"""A whole world for runner jobs: the fake GitHub assigning jobs as GitHub does and sending its webhooks, the real
control plane (uvicorn, embedded Valkey, the real GitHub App client), and real host agents on the sandbox backend
whose guests start the stand-in runner (smith.testing.standin) with the JIT config they were given."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from smith.adapters.github import GitHubApp
from smith.adapters.sandbox import SandboxVMM
from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.control.app import create_app
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from smith.testing.standin import install_runner
from tests.control.conftest import (
    WEBHOOK_SECRET,
    Control,
    agent_token,
    github_app,
    make_settings,
    operator_token,
)

REPO = "Codertocat/Hello-World"


@dataclass
class World:
    control: Control
    fake: FakeGitHub
    credentials: GitHubApp
    base: Path
    agents: list[Agent] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    outputs: list[LocalFiles] = field(default_factory=list)

    async def add_agent(
        self, name: str, *, listener: str | None = None, as_if_root: bool = False, vcpus: int = 4, **config: Any
    ) -> Agent:
        vmm = SandboxVMM(self.base / f"{name}-sbx", network="host")
        vmm.runner_dir = install_runner(vmm.base_dir / "runner", listener=listener, as_if_root=as_if_root)
        output = LocalFiles(self.base / f"{name}-logs")
        agent = Agent(
            AgentConfig(
                name, name, vcpus, 16384, **({"max_vms": 4, "drain_seconds": 2, "lease_wait_seconds": 2} | config)
            ),
            ControlClient(self.control.url, agent_token(name)),
            vmm,
            output,
        )
        self.agents.append(agent)
        self.outputs.append(output)
        self.tasks.append(asyncio.create_task(agent.run()))
        await asyncio.wait_for(agent.registered.wait(), 30)
        return agent

    async def job(self, job_id: int | str) -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=self.control.url, headers={"Authorization": f"Bearer {operator_token()}"}
        ) as c:
            r = await c.get(f"/v1/jobs/{job_id}")
            return dict(r.json()) if r.status_code == 200 else {}

    async def until(self, what: Callable[[], Any], timeout: float = 30, message: str = "") -> Any:
        """Poll ``what`` (sync or async) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(message or "condition never held")
            await asyncio.sleep(0.05)

    def log_of(self, job_id: int | str) -> str:
        return "".join(o.path(str(job_id)).read_text() for o in self.outputs if o.path(str(job_id)).exists())


@contextlib.asynccontextmanager
async def world(redis_url: str, base: Path, **settings: Any) -> AsyncIterator[World]:
    """The fake GitHub (its webhooks going to the control plane), the control plane; agents come with
    ``add_agent``."""
    with github_app() as (fake, credentials):
        control_settings = make_settings(redis_url, **settings)
        srv = ThreadedServer(create_app(control_settings, credentials=credentials))
        srv.start()
        fake.actions.deliver_to(srv.url + "/webhooks/github", WEBHOOK_SECRET)
        w = World(Control(srv.url, control_settings, srv), fake, credentials, base)
        try:
            yield w
        finally:
            for agent in w.agents:
                await agent.shutdown()
            for task in w.tasks:
                with contextlib.suppress(Exception):
                    await task
            fake.actions.close()
            srv.stop()
