"""The agent's /metrics: a job's VM shows as running while it runs, its boot time is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from smith.agent import metrics
from smith.agent.logsink import LocalFiles
from smith.domain.vms import VMShape
from smith.ports import Machine
from smith.wire.guest import GuestEvent
from tests.agent.onejob import OneJob, ScriptedVM, ScriptedVMs, job
from tests.scrape import parse, value

LINE = GuestEvent(type="line", ts=time.time(), stream="stdout", line="hello")
EXIT = GuestEvent(type="exit", ts=time.time(), exit_code=0)


class GatedVM(ScriptedVM):
    def __init__(self, vm_id: str, gate: asyncio.Event, running: asyncio.Event) -> None:
        super().__init__(vm_id, [LINE, EXIT])
        self.gate, self.running = gate, running

    async def events(self) -> AsyncIterator[GuestEvent]:
        yield LINE
        self.running.set()
        await self.gate.wait()
        yield EXIT


class GatedVMs(ScriptedVMs):
    def __init__(self) -> None:
        super().__init__([])
        self.gate, self.running = asyncio.Event(), asyncio.Event()

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        return GatedVM(vm_id, self.gate, self.running)


async def scrape(app: object, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as c:  # type: ignore[arg-type]
        return await c.get("/metrics", headers=headers)


async def test_running_job_and_boot_time_in_agent_metrics(tmp_path: Path) -> None:
    before = parse((await scrape(metrics.app(_Idle(), None))).text)
    vmm = GatedVMs()
    one = OneJob(job("m1"))
    seen: dict[str, float] = {}

    async def watch() -> None:
        await vmm.running.wait()
        samples = parse((await scrape(metrics.app(one.agent, None))).text)
        seen["running"] = value(samples, "smith_vms", backend="sandbox", runner_class="smith-2vcpu", state="running")
        seen["busy"] = value(samples, "gha_busy_runners")
        seen["boots"] = value(samples, "smith_vm_boot_seconds_count", backend="sandbox", runner_class="smith-2vcpu")
        seen["spool"] = value(samples, "smith_agent_spool_bytes")
        vmm.gate.set()

    watcher = asyncio.create_task(watch())
    await one.run(vmm, LocalFiles(tmp_path / "logs"))
    await watcher
    assert one.reports["succeeded"]["exit_code"] == 0
    assert seen["running"] == 1 and seen["busy"] == 1 and seen["spool"] == 0
    boots = value(before, "smith_vm_boot_seconds_count", backend="sandbox", runner_class="smith-2vcpu")
    assert seen["boots"] - boots == 1


class _Idle:
    """Enough of an agent for a scrape before any runs."""

    class _Ledger:
        free_vcpus = free_vms = 0

    def __init__(self) -> None:
        self.vmm = ScriptedVMs([])
        self.jobs: dict[str, object] = {}
        self.pool = None
        self.ledger = self._Ledger()
        self.output = None


async def test_agent_metrics_token() -> None:
    app = metrics.app(_Idle(), _Secret("agent-scrape-token"))
    assert (await scrape(app)).status_code == 401
    assert (await scrape(app, "agent-scrape-token")).status_code == 200


class _Secret:
    def __init__(self, value: str) -> None:
        self.value = value

    def get_secret_value(self) -> str:
        return self.value


async def test_served_on_its_own_port() -> None:
    from smith.adapters.redis.embedded import free_port
    from smith.agent.settings import AgentSettings

    settings = AgentSettings(agent_metrics_port=free_port(), metrics_token="port-token")
    task = asyncio.create_task(metrics.serve(_Idle(), settings))
    url = f"http://127.0.0.1:{settings.agent_metrics_port}/metrics"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                try:
                    r = await c.get(url, headers={"Authorization": "Bearer port-token"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert r.status_code == 200 and "gha_idle_runners 0.0" in r.text
            assert (await c.get(url)).status_code == 401
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
