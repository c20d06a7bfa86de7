"""Benchmark the control plane: signed workflow_job deliveries/s, latency, and queued-to-leased latency.

Starts a private Valkey (AOF, appendfsync always: the `smith dev` default) and `smith control serve` as a
separate process on loopback, then drives it with a lean HTTP/1.1 keep-alive client (requests pre-signed
before timing starts, so the client's HMAC work is not measured), and finally measures how long a job takes
from "webhook accepted" to "leased by an agent that was already waiting".

    uv run python bench/webhooks.py [--deliveries 20000] [--connections 32] [--workers 1] [--json]
        [--durability local|replicas|aof]

``--durability replicas`` starts a replica beside the primary and sets SMITH_REDIS_DURABILITY=replicas (each
group's pipeline ends with WAIT 1); ``aof`` sets WAITAOF. Each script's stored reply (replay.py) is in every
figure: it is part of every state change.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from smith import tokens  # noqa: E402
from smith.adapters.redis.embedded import EmbeddedRedis, free_port  # noqa: E402

SECRET = "bench-webhook-secret"
AGENT_SECRET = "bench-agent-secret-0123456789abcdef0123"
FIXTURE = ROOT / "tests" / "fixtures" / "github-webhooks" / "workflow_job" / "queued.payload.json"


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used: a figure other load on a shared machine barely moves."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def build_requests(n: int, port: int, start_id: int, label: str = "smith-2vcpu") -> list[bytes]:
    base = json.loads(FIXTURE.read_text())
    out = []
    for i in range(n):
        p = copy.deepcopy(base)
        p["workflow_job"]["id"] = start_id + i
        p["workflow_job"]["labels"] = ["self-hosted", label]
        body = orjson.dumps(p)
        sig = tokens.github_signature(SECRET.encode(), body)
        head = (
            f"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
            f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


async def blast(port: int, requests: list[bytes], connections: int) -> tuple[float, list[float], int]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            req = queue.pop()
            t = time.perf_counter()
            writer.write(req)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - t)
            if status != 202:
                errors += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - t0, latencies, errors


async def queued_to_leased(url: str, port: int, samples: int) -> list[tuple[float, float]]:
    """(webhook sent -> lease received by an agent already waiting, webhook sent -> 202 received)."""
    tok = tokens.mint(AGENT_SECRET, scope="agent", subject="bench-agent", ttl_seconds=3600, agent_id="bench-agent")
    headers = {"Authorization": f"Bearer {tok}"}
    out = []
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as agent,
        httpx.AsyncClient(base_url=url, timeout=30) as hook,
    ):
        await agent.post(
            "/v1/agents/register",
            json={"hostname": "bench", "vcpus": 64, "memory_mib": 262144, "max_vms": 64, "labels": ["smith-8vcpu"]},
        )
        # Its own class, so the thousands of jobs queued by the throughput run are not in the way.
        reqs = build_requests(samples, port, 900_000_000, label="smith-8vcpu")
        for raw in reqs:
            head, body = raw.split(b"\r\n\r\n", 1)
            hdrs = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
            hdrs.pop("Content-Length")
            lease = asyncio.create_task(
                agent.post("/v1/agents/lease", json={"free_vcpus": 64, "free_memory_mib": 262144, "wait_seconds": 10})
            )
            await asyncio.sleep(0.02)  # the agent is now waiting inside XREADGROUP BLOCK
            sent = time.perf_counter()
            hook_task = asyncio.create_task(hook.post("/webhooks/github", content=body, headers=hdrs))
            lr = await lease
            leased = time.perf_counter()
            r = await hook_task
            accepted = time.perf_counter()
            assert r.status_code == 202, r.text
            assert lr.status_code == 200, lr.text
            job_id = lr.json()["job"]["id"]
            await agent.post(f"/v1/agents/jobs/{job_id}/status", json={"state": "succeeded", "exit_code": 0})
            out.append((leased - sent, accepted - sent))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deliveries", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="control plane worker processes")
    ap.add_argument("--lease-samples", type=int, default=300)
    ap.add_argument("--fsync", default="always", choices=["always", "everysec"])
    ap.add_argument("--durability", default="local", choices=["local", "replicas", "aof"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="smith-bench-"))
    redis = EmbeddedRedis(tmp / "valkey", port=free_port(), fsync=args.fsync)
    redis.start()
    replica = None
    if args.durability == "replicas":
        replica = EmbeddedRedis(
            tmp / "replica", port=free_port(), fsync=args.fsync, extra=(f"replicaof 127.0.0.1 {redis.port}",)
        )
        replica.start()
        import redis as redis_py

        probe = redis_py.Redis(port=replica.port)
        for _ in range(200):  # the replica has synced before anything is timed
            if probe.info("replication").get("master_link_status") == "up":
                break
            time.sleep(0.05)
        probe.close()
    port = free_port()
    env = {
        **os.environ,
        "SMITH_REDIS_URL": redis.url,
        "SMITH_GITHUB_WEBHOOK_SECRET": SECRET,
        "SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET,
        "SMITH_JWT_SECRET": AGENT_SECRET,
        "SMITH_LOG_LEVEL": "WARNING",
        "SMITH_REDIS_DURABILITY": args.durability,
        "SMITH_SPOOL_DIR": str(tmp / "spool"),
        "SMITH_WEBHOOK_RATE_PER_SECOND": "0",  # measure the server, not its rate limit
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "smith", "control", "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        requests = build_requests(args.deliveries, port, 1)
        asyncio.run(blast(port, build_requests(500, port, 500_000_000), args.connections))  # warm-up
        assert redis.proc is not None
        pids = {"server": server.pid, "valkey": redis.proc.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        elapsed, lat, errors = asyncio.run(blast(port, requests, args.connections))
        cpu = {k: (cpu_seconds(p) - cpu0[k]) / args.deliveries * 1e6 for k, p in pids.items()}
        q2l = asyncio.run(queued_to_leased(url, port, args.lease_samples))
        result = {
            "deliveries": args.deliveries,
            "connections": args.connections,
            "workers": args.workers,
            "fsync": args.fsync,
            "durability": args.durability,
            "errors": errors,
            "deliveries_per_s": round(args.deliveries / elapsed, 1),
            "latency_ms_p50": round(pct(lat, 50) * 1000, 2),
            "latency_ms_p99": round(pct(lat, 99) * 1000, 2),
            "server_cpu_us_per_delivery": round(cpu["server"]),
            "valkey_cpu_us_per_delivery": round(cpu["valkey"]),
            "webhook_sent_to_leased_ms_p50": round(statistics.median(x[0] for x in q2l) * 1000, 2),
            "webhook_sent_to_leased_ms_p99": round(pct([x[0] for x in q2l], 99) * 1000, 2),
            "webhook_sent_to_202_ms_p50": round(statistics.median(x[1] for x in q2l) * 1000, 2),
        }
    finally:
        server.terminate()
        server.wait(10)
        if replica:
            replica.stop()
        redis.stop()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
