"""End to end on this machine: signed webhook -> control plane -> host agent -> sandbox -> output and outcome.

The control plane is the real app under uvicorn against the real Valkey, minting JIT configs with the real GitHub
App client; the agent is the real daemon with the bubblewrap backend. GitHub's API is the fake in
smith.testing.github (GitHub cannot be reached from here), and GitHub's runner is a stub `run.sh` that prints
what it was given.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.adapters.sandbox import SandboxVMM, _reachable_dir
from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.control.app import create_app
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.control.conftest import Control, agent_token, github_app, make_settings, operator_token, queued_payload

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)")


def make_runner(base: Path) -> Path:
    runner = base / "runner"
    runner.mkdir(parents=True)
    (runner / "run.sh").write_text(  # runs its job once the test, playing GitHub, said it gave it one
        '#!/bin/sh\necho "runner: $# args, config $ACTIONS_RUNNER_INPUT_JITCONFIG"\necho "job: $SMITH_JOB_ID"\n'
        "while [ ! -e /runner/go ]; do sleep 0.05; done\n"
        'echo "Running job: build"\necho "Job build completed with result: Succeeded"\nexit 0\n'
    )
    (runner / "run.sh").chmod(0o755)
    runner.chmod(0o755)
    return runner


async def wait_state(
    control: Control, job_id: str, states: set[str], timeout: float = 60, attempts: int | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=control.url, headers={"Authorization": f"Bearer {operator_token()}"}) as c:
        while True:
            r = await c.get(f"/v1/jobs/{job_id}")
            if (
                r.status_code == 200
                and r.json()["state"] in states
                and (attempts is None or r.json()["attempts"] == attempts)
            ):
                return dict(r.json())
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached {states}: {r.text}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def running_agent(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Control, Agent, FakeGitHub, LocalFiles]]:
    with github_app() as (fake, credentials):
        settings = make_settings(redis_url)
        srv = ThreadedServer(create_app(settings, credentials=credentials))
        srv.start()
        control = Control(srv.url, settings, srv)
        vmm = SandboxVMM(tmp_path / "sbx")
        vmm.runner_dir = make_runner(vmm.base_dir)
        output = LocalFiles(tmp_path / "logs")
        agent = Agent(
            AgentConfig(
                agent_id="e2e-host",
                hostname="e2e-host",
                vcpus=4,
                memory_mib=8192,
                max_vms=4,
                warm_pool={"smith-2vcpu": 1},
                drain_seconds=5,
                lease_wait_seconds=5,
            ),
            ControlClient(control.url, agent_token("e2e-host")),
            vmm,
            output,
        )
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.registered.wait(), 30)
        yield control, agent, fake, output
        await agent.shutdown()
        await task
        srv.stop()


async def test_webhook_to_sandbox_and_back(running_agent: tuple[Control, Agent, FakeGitHub, LocalFiles]) -> None:
    control, agent, fake, output = running_agent
    r = await asyncio.to_thread(control.deliver, queued_payload(8001, ["self-hosted", "smith-2vcpu"]))
    assert r.status_code == 202 and r.json()["outcome"] == "queued"
    await wait_state(control, "8001", {"running"})
    started = queued_payload(8001, ["self-hosted", "smith-2vcpu"], action="in_progress")
    started["workflow_job"]["runner_name"] = "smith-8001-1"  # GitHub gave this job to the runner minted for it
    assert (await asyncio.to_thread(control.deliver, started)).status_code == 202
    vmm = getattr(agent.vmm, "inner", agent.vmm)  # (the metrics wrap the backend)
    assert isinstance(vmm, SandboxVMM) and vmm.runner_dir is not None
    (vmm.runner_dir / "go").touch()
    job = await wait_state(control, "8001", {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert job["exit_code"] == 0 and job["agent_id"] == "e2e-host"
    [runner] = fake.runners_in("repo:codertocat/hello-world")
    assert runner["name"] == "smith-8001-1"  # one ephemeral runner registered for this job's attempt
    events = [json.loads(line) for line in output.path("8001").read_text().splitlines()]
    lines = [e["line"] for e in events if e["type"] == "line"]
    stdout = [e["line"] for e in events if e["type"] == "line" and e["stream"] == "stdout"]
    assert stdout[:2] == ["runner: 0 args, config ***", "job: 8001"]  # the JIT config itself never leaves the VM
    assert not any("Must not run" in line for line in lines)
    assert events[0]["type"] == "started" and events[-1] == {**events[-1], "type": "exit", "exit_code": 0}


async def test_script_job_failure_is_reported(running_agent: tuple[Control, Agent, FakeGitHub, LocalFiles]) -> None:
    control, *_ = running_agent
    with control.client(operator_token()) as c:
        job = c.post("/v1/jobs", json={"run": "echo about to fail; exit 42", "labels": ["smith-2vcpu"]}).json()
    final = await wait_state(control, job["id"], {"succeeded", "failed"})
    assert final["state"] == "failed" and final["exit_code"] == 42 and final["reason"] == "exit code 42"


async def test_operator_cancel_stops_a_running_job(
    running_agent: tuple[Control, Agent, FakeGitHub, LocalFiles],
) -> None:
    control, agent, _, output = running_agent
    with control.client(operator_token()) as c:
        job = c.post("/v1/jobs", json={"run": "echo started; sleep 600", "labels": ["smith-2vcpu"]}).json()
    await wait_state(control, job["id"], {"running"})
    with control.client(operator_token()) as c:
        assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["outcome"] == "cancel_requested"
    final = await wait_state(control, job["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert final["state"] == "cancelled"
    assert not agent.jobs
    assert "smith: job stopped (cancel)" in output.path(job["id"]).read_text()


async def test_warm_pool_serves_jobs_and_refills(running_agent: tuple[Control, Agent, FakeGitHub, LocalFiles]) -> None:
    control, agent, *_ = running_agent
    assert agent.pool is not None
    deadline = time.monotonic() + 20
    while not agent.pool.ready["smith-2vcpu"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    warm = agent.pool.ready["smith-2vcpu"][0]
    with control.client(operator_token()) as c:
        job = c.post("/v1/jobs", json={"run": "echo warm", "labels": ["smith-2vcpu"]}).json()
    await wait_state(control, job["id"], {"succeeded"})
    assert agent.stats[-1]["warm"] == 1.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the pool boots a replacement
        ready = agent.pool.ready["smith-2vcpu"]
        if ready and ready[0] is not warm:
            break
        await asyncio.sleep(0.05)
    assert agent.pool.ready["smith-2vcpu"] and agent.pool.ready["smith-2vcpu"][0] is not warm
    assert agent.ledger.used_vms == 1  # only the warm VM holds capacity now


async def test_capacity_is_never_exceeded(running_agent: tuple[Control, Agent, FakeGitHub, LocalFiles]) -> None:
    control, agent, *_ = running_agent
    peak = {"vcpus": 0, "vms": 0}

    async def watch() -> None:
        while True:
            peak["vcpus"] = max(peak["vcpus"], agent.ledger.used_vcpus)
            peak["vms"] = max(peak["vms"], agent.ledger.used_vms)
            assert agent.ledger.used_vcpus <= 4 and agent.ledger.used_vms <= 4
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    with control.client(operator_token()) as c:
        ids = [c.post("/v1/jobs", json={"run": "sleep 1", "labels": ["smith-2vcpu"]}).json()["id"] for _ in range(5)]
    for jid in ids:
        assert (await wait_state(control, jid, {"succeeded", "failed"}))["state"] == "succeeded"
    watcher.cancel()
    assert peak["vcpus"] == 4  # two 2-vCPU jobs at once, never three


def agent_process(control: Control, work: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env.update(
        {
            "SMITH_CONTROL_URL": control.url,
            "SMITH_AGENT_TOKEN": agent_token("crash-host"),
            "SMITH_AGENT_ID": "crash-host",
            "SMITH_AGENT_BACKEND": "sandbox",
            "SMITH_AGENT_VCPUS": "2",
            "SMITH_AGENT_MEMORY_MIB": "4096",
            "SMITH_AGENT_DRAIN_SECONDS": "2",
            "SMITH_AGENT_WORK_DIR": str(work),
            "SMITH_DATA_DIR": str(work.parent),
            **(env_extra or {}),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "smith", "agent", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
async def test_agent_killed_mid_job_leaves_nothing_and_the_job_is_retried(
    control_factory: Callable[..., Control], tmp_path: Path
) -> None:
    control = control_factory(lease_ttl_seconds=300)  # not the TTL: the restart itself releases the lease
    work = tmp_path / "agent"
    with control.client(operator_token()) as c:
        job = c.post("/v1/jobs", json={"run": "echo attempt; sleep 600", "labels": ["smith-2vcpu"]}).json()
    first = agent_process(control, work)
    try:
        running = await wait_state(control, job["id"], {"running"}, timeout=60)
        assert running["attempts"] == 1
        sandbox_dir = _reachable_dir(work / "sandbox")
        sandboxes = list(sandbox_dir.glob("sbx-*"))
        assert sandboxes, "the job's sandbox should exist while it runs"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = agent_process(control, work)
    try:
        again = await wait_state(control, job["id"], {"running"}, timeout=60, attempts=2)
        assert again["attempts"] == 2 and "restarted" in again["reason"]
        # The first run's sandbox and its processes are gone; only the retry's sandbox is there.
        live = list(sandbox_dir.glob("sbx-*"))
        assert len(live) == 1 and live[0].name.endswith("-2")
        second.send_signal(signal.SIGTERM)  # drain: the job cannot finish in time, so it is reported failed
        out, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    final = await wait_state(control, job["id"], {"failed", "succeeded", "cancelled"}, timeout=30)
    assert final["state"] == "failed" and "shut down" in final["reason"]
    assert second.returncode == 0, out
    assert not list(sandbox_dir.glob("sbx-*"))  # the drained agent left nothing behind
