"""End to end: the real control plane, the real host agent, FirecrackerVMM on the fake Firecracker.

An operator submits a job; the agent leases it, runs it in a (warm) fake-Firecracker VM whose config went in
through MMDS, streams its output, reports the exit code; on shutdown every VM, jail and slot is gone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.testing.firecracker import VERSION
from tests.agent.firecracker_support import make_rig
from tests.control.conftest import Control, agent_token, operator_token


async def wait_terminal(op: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        view: dict[str, Any] = (await op.get(f"/v1/jobs/{job_id}")).json()
        if view["state"] in ("succeeded", "failed", "cancelled"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def fc_agent(control: Control, vmm: Any, output: Any, **config: Any) -> Agent:
    """The host agent "fc-host" on this VMM, talking to the test control plane."""
    cfg = AgentConfig(agent_id="fc-host", hostname="fc-host", lease_wait_seconds=1.0, drain_seconds=5, **config)
    return Agent(cfg, ControlClient(control.url, agent_token("fc-host")), vmm, output)


def read(path: Path) -> str:
    return path.read_text()


async def test_jobs_run_in_firecracker_vms_end_to_end(control: Control, tmp_path: Path) -> None:
    for rig in make_rig():
        output = LocalFiles(tmp_path / "logs")
        agent = fc_agent(control, rig.vmm, output, vcpus=4, memory_mib=8192, max_vms=3, warm_pool={"self-hosted": 1})
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


async def test_firecrackers_own_log_and_metrics_reach_the_log_pipeline(
    control: Control, tmp_path: Path, chdb_dir: Path
) -> None:
    """The agent ships a Firecracker job's guest output and Firecracker's own log and metrics to `smith logs`."""
    import uuid

    from smith.adapters.chdb import ChdbClickHouse
    from smith.agent.logship import LogShipper
    from smith.agent.logsink import Fanout
    from smith.logs.app import create_app
    from smith.logs.settings import LogsSettings
    from smith.testing.servers import ThreadedServer
    from tests.logs.conftest import AGENT_SECRET, JWT_SECRET
    from tests.logs.conftest import operator_token as logs_operator_token

    database = f"t_{uuid.uuid4().hex[:12]}"
    settings = LogsSettings(
        agent_token_secret=AGENT_SECRET,
        jwt_secret=JWT_SECRET,
        clickhouse_database=database,
        logs_batch_delay_seconds=0.02,
    )
    for rig in make_rig(jailed=True):  # paths in the chroot: the agent reads the VMM's files from the host
        with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as logs:
            # No token of its own: each job's lines (the Firecracker files too) go with its lease's log token.
            shipper = LogShipper(logs.url, None, tmp_path / "spool", host="fc-host")
            output = Fanout(LocalFiles(tmp_path / "logs"), shipper)
            agent = fc_agent(control, rig.vmm, output, vcpus=2, memory_mib=4096, max_vms=1)
            runner = asyncio.create_task(agent.run())
            try:
                async with httpx.AsyncClient(
                    base_url=control.url, headers={"Authorization": f"Bearer {operator_token()}"}, timeout=30
                ) as op:
                    job = (await op.post("/v1/jobs", json={"run": "echo from-the-guest"})).json()
                    assert (await wait_terminal(op, job["id"]))["state"] == "succeeded"
            finally:
                await agent.shutdown()
                await runner
            async with httpx.AsyncClient(
                base_url=logs.url, headers={"Authorization": f"Bearer {logs_operator_token()}"}, timeout=30
            ) as reader:
                deadline = time.monotonic() + 60  # the shipper's last batch may still be on its way (a busy host)
                while True:
                    page = (await reader.get(f"/v1/jobs/{job['id']}/logs", params={"limit": 1000})).json()
                    if page.get("complete") or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
        lines = page["lines"]
        by_step: dict[str, list[str]] = {}
        for x in lines:
            by_step.setdefault(x["step"], []).append(x["line"])
        assert any(t == "from-the-guest" for t in by_step[""])
        assert any(t.endswith(f"Running Firecracker v{VERSION}") for t in by_step["firecracker"])
        assert any(
            t.endswith("Successfully started microvm that was configured from the API") for t in by_step["firecracker"]
        )
        # (no Ctrl+Alt+Del from stop(): the guest's init rebooted when the job was done, and Firecracker exited)
        metrics = [orjson.loads(t) for t in by_step["firecracker-metrics"]]
        assert metrics and all("utc_timestamp_ms" in m for m in metrics)
        assert lines[-1]["line"] == "exit code 0" and lines[-1]["last"] and page["complete"]
        assert all(x["host"] == "fc-host" for x in lines)
        assert rig.leftovers() == []
