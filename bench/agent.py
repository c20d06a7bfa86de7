"""Benchmark the host agent: job leased -> guest running its first command, cold and warm; VMs per host.

Runs the real control plane (uvicorn, private Valkey) and the real agent daemon in this process, submits script
jobs (`echo first`) one at a time, and takes from the agent the time between receiving the lease and the job's
first output line. Then boots VMs until the host's capacity is used and measures the agent's memory per VM.

    uv run python bench/agent.py [--jobs 30] [--backend sandbox|qemu] [--density 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from smith import tokens  # noqa: E402
from smith.adapters.redis.embedded import EmbeddedRedis, free_port  # noqa: E402
from smith.agent.client import ControlClient  # noqa: E402
from smith.agent.daemon import Agent, AgentConfig  # noqa: E402
from smith.agent.logsink import LocalFiles  # noqa: E402
from smith.control.app import create_app  # noqa: E402
from smith.control.settings import ControlSettings  # noqa: E402
from smith.domain.vms import VMShape  # noqa: E402
from smith.logging import configure  # noqa: E402
from smith.testing.servers import ThreadedServer  # noqa: E402
from smith.wire.agent import JobSpec  # noqa: E402
from smith.wire.guest import GuestConfig  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_vmm(backend: str, work: Path) -> Any:
    from smith.agent.backends import build

    class S:  # the few settings build() reads
        work_dir = work
        data_dir = Path(os.environ.get("SMITH_DATA_DIR", work))
        agent_kernel = os.environ.get("SMITH_AGENT_KERNEL")
        agent_rootfs = os.environ.get("SMITH_AGENT_ROOTFS")
        agent_qemu_bin = "qemu-system-x86_64"
        agent_firecracker_bin = "firecracker"
        agent_jailer_bin = "jailer"

    if backend == "qemu" and S.agent_kernel is None:  # the image `smith image build` makes
        from smith.images.build import build_image

        S.data_dir = work
        build_image(work)

    return build(backend, S())


async def latency(backend: str, jobs: int, warm: int, work: Path, control_url: str) -> list[float]:
    agent_id = f"bench-{backend}-{warm}"
    token = tokens.mint(SECRET, scope="agent", subject=agent_id, ttl_seconds=3600, agent_id=agent_id)
    op = tokens.mint(SECRET, scope="operator", subject="bench", ttl_seconds=3600)
    agent = Agent(
        AgentConfig(
            agent_id=agent_id,
            hostname=agent_id,
            vcpus=8,
            memory_mib=16384,
            max_vms=8,
            warm_pool={"smith-2vcpu": warm} if warm else {},
            lease_wait_seconds=5,
            drain_seconds=5,
        ),
        ControlClient(control_url, token),
        make_vmm(backend, work / f"{backend}-{warm}"),
        LocalFiles(work / "logs"),
    )
    task = asyncio.create_task(agent.run())
    await agent.registered.wait()
    async with httpx.AsyncClient(base_url=control_url, headers={"Authorization": f"Bearer {op}"}) as c:
        for _ in range(jobs):
            if warm:  # wait until the pool has refilled, so every job finds a warm VM
                while not (agent.pool and agent.pool.ready["smith-2vcpu"]):
                    await asyncio.sleep(0.01)
            before = len(agent.stats)
            await c.post("/v1/jobs", json={"run": "echo first", "labels": ["smith-2vcpu"]})
            while len(agent.stats) == before:
                await asyncio.sleep(0.005)
    await agent.shutdown()
    await task
    return [s["lease_to_first_line"] for s in agent.stats if bool(s["warm"]) == bool(warm)]


async def density(backend: str, limit: int, work: Path) -> dict[str, float]:
    """Boot VMs (each running `sleep`) until `limit` or a failure; the agent's memory per VM."""
    vmm = make_vmm(backend, work / f"density-{backend}")
    shape = VMShape("self-hosted", 1, 512)
    base = rss_mib()
    machines = []
    t0 = time.monotonic()
    try:
        for i in range(limit):
            m = await vmm.boot(shape, f"d{i}")
            await m.assign(
                GuestConfig(
                    job=JobSpec(id=f"d{i}", runner_class="self-hosted", vcpus=1, memory_mib=512, run="sleep 600")
                )
            )
            machines.append(m)
    except Exception as exc:
        print(f"stopped at {len(machines)} VMs: {exc}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    grown = rss_mib() - base
    for m in machines:
        await m.stop()
    return {
        "vms": len(machines),
        "boot_all_s": round(elapsed, 2),
        "agent_rss_per_vm_kib": round(grown * 1024 / max(1, len(machines)), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--backend", default="sandbox")
    ap.add_argument("--density", type=int, default=50, help="VMs to boot for the density figure (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    configure("WARNING")
    work = Path(tempfile.mkdtemp(prefix="smith-bench-agent-"))
    redis = EmbeddedRedis(work / "valkey", port=free_port())
    redis.start()
    settings = ControlSettings(
        redis_url=redis.url, agent_token_secret=SECRET, jwt_secret=SECRET, github_webhook_secret=SECRET, data_dir=work
    )
    result: dict[str, Any] = {"backend": args.backend, "jobs": args.jobs}
    try:
        with ThreadedServer(create_app(settings)) as srv:
            cold = asyncio.run(latency(args.backend, args.jobs, 0, work, srv.url))
            warm = asyncio.run(latency(args.backend, args.jobs, 1, work, srv.url))
        for name, xs in (("cold", cold), ("warm", warm)):
            result[f"{name}_lease_to_first_line_ms_p50"] = round(statistics.median(xs) * 1000, 1)
            result[f"{name}_lease_to_first_line_ms_p95"] = round(pct(xs, 95) * 1000, 1)
        if args.density:
            result.update(
                {f"density_{k}": v for k, v in asyncio.run(density(args.backend, args.density, work)).items()}
            )
    finally:
        redis.stop()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>36}: {v}")


if __name__ == "__main__":
    main()
