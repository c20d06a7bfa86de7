"""End to end: the real control plane, the real host agent, FirecrackerVMM on the fake Firecracker.

An operator submits a job; the agent leases it, runs it in a (warm) fake-Firecracker VM whose config went in
through MMDS, streams its output, reports the exit code; on shutdown every VM, jail and slot is gone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from tests.agent.firecracker_support import make_rig
from tests.control.conftest import Control, agent_token, operator_token


async def wait_terminal(op: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        view: dict[str, Any] = (await op.get(f"/v1/jobs/{job_id}")).json()
        if view["state"] in ("succeeded", "failed", "cancelled"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def read(path: Path) -> str:
    return path.read_text()


async def test_jobs_run_in_firecracker_vms_end_to_end(control: Control, tmp_path: Path) -> None:
    for rig in make_rig():
        output = LocalFiles(tmp_path / "logs")
        config = AgentConfig(
            agent_id="fc-host",
            hostname="fc-host",
            vcpus=4,
            memory_mib=8192,
            max_vms=3,
            lease_wait_seconds=1.0,
            warm_pool={"self-hosted": 1},
            drain_seconds=5,
        )
        agent = Agent(config, ControlClient(control.url, agent_token("fc-host")), rig.vmm, output)
        runner = asyncio.create_task(agent.run())
        headers = {"Authorization": f"Bearer {operator_token()}"}
        try:
            async with httpx.AsyncClient(base_url=control.url, headers=headers, timeout=30) as op:
                ok = (await op.post("/v1/jobs", json={"run": "echo from-firecracker; uname -s"})).json()
                bad = (await op.post("/v1/jobs", json={"run": "echo failing >&2; exit 4"})).json()
                ok_view = await wait_terminal(op, ok["id"])
                bad_view = await wait_terminal(op, bad["id"])
            assert (ok_view["state"], ok_view["exit_code"]) == ("succeeded", 0)
            assert (bad_view["state"], bad_view["exit_code"]) == ("failed", 4)
            log = read(output.path(ok["id"]))
            assert '"line":"from-firecracker"' in log and '"type":"exit"' in log
            assert "failing" in read(output.path(bad["id"]))
            booted = sorted(p.name for p in rig.records.glob("smith-*.jsonl"))
            assert any(name.startswith("smith-warm-") for name in booted)  # the warm pool booted through the VMM
        finally:
            await agent.shutdown()
            await runner
        assert rig.leftovers() == [] and rig.network.in_use == {}
