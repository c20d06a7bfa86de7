"""End to end: N jobs from signed webhooks to done across two agents; jobs/s and queue wait from /metrics.

The real control plane (uvicorn in a thread, a private Valkey with appendfsync always) and two real agent daemons
in this process, on the fast in-process VM stand-in (``smith.testing.fleet.InstantVMs``: a VM boots at once and
its guest prints one line and exits 0), so what is measured is Smith's own path: webhook -> queue -> lease ->
reports. Prints jobs/s, and p50/p95 queue wait (webhook accepted -> VM running) estimated from the
``smith_queue_wait_seconds`` histogram read from ``/metrics``, checked against the job records: the histogram
counted every job, its sum equals the records' summed waits, and each estimate lies in the bucket that holds the
records' exact percentile.

    uv run python bench/e2e.py [--jobs 200] [--agents 2] [--vms 16] [--concurrency 16] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import orjson  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from smith.adapters.redis.embedded import EmbeddedRedis, free_port  # noqa: E402
from smith.cli.reportdata import percentile, queue_wait  # noqa: E402
from smith.logging import configure  # noqa: E402
from smith.metrics import WAIT_BUCKETS, histogram_quantile  # noqa: E402
from smith.testing.fleet import Fleet, fleet  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "github-webhooks" / "workflow_job" / "queued.payload.json"
CLS = "smith-2vcpu"


def wait_histogram(text: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets, count, sum) of smith_queue_wait_seconds for the class."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "smith_queue_wait_seconds":
            continue
        for s in family.samples:
            if s.labels.get("runner_class") != CLS:
                continue
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
    return buckets, count, total


async def deliver(f: Fleet, c: httpx.AsyncClient, n: int, concurrency: int, first_id: int) -> None:
    base = json.loads(FIXTURE.read_text())
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        p = copy.deepcopy(base)
        p["workflow_job"]["id"] = first_id + i
        p["workflow_job"]["labels"] = ["self-hosted", CLS]
        body = orjson.dumps(p)
        async with gate:
            r = await c.post("/webhooks/github", content=body, headers=f.signed_headers(body, f"e2e-{first_id + i}"))
        if r.status_code != 202 or r.json().get("outcome") != "queued":
            raise SystemExit(f"webhook {i}: {r.status_code} {r.text}")

    await asyncio.gather(*(one(i) for i in range(n)))


async def finished(c: httpx.AsyncClient, auth: dict[str, str], n: int, deadline: float) -> list[dict[str, Any]]:
    while True:
        jobs = (await c.get("/v1/jobs", params={"limit": min(1000, n)}, headers=auth)).json()
        if len(jobs) >= n and all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return list(jobs)
        if time.monotonic() > deadline:
            done = sum(j["state"] == "succeeded" for j in jobs)
            raise SystemExit(f"only {done} of {n} jobs done in time")
        await asyncio.sleep(0.1)


def bucket_of(value: float) -> tuple[float, float]:
    lower = 0.0
    for le in WAIT_BUCKETS:
        if value <= le:
            return lower, le
        lower = le
    return lower, float("inf")


async def run(args: argparse.Namespace, work: Path, redis_url: str) -> dict[str, Any]:
    async with fleet(redis_url, work, agents=args.agents, vms_per_agent=args.vms) as f:
        auth = {"Authorization": f"Bearer {f.operator_token()}"}
        async with httpx.AsyncClient(base_url=f.url, timeout=60) as c:
            before = wait_histogram((await c.get("/metrics")).text)
            started = time.monotonic()
            await deliver(f, c, args.jobs, args.concurrency, first_id=int(time.time() * 1000) % 10**9)
            jobs = await finished(c, auth, args.jobs, started + args.timeout)
            elapsed = time.monotonic() - started
            after = wait_histogram((await c.get("/metrics")).text)
    prior = dict(before[0])
    buckets = [(le, n - prior.get(le, 0.0)) for le, n in after[0]]
    count, total = after[1] - before[1], after[2] - before[2]
    waits = [w for j in jobs if (w := queue_wait(j)) is not None]
    result: dict[str, Any] = {
        "jobs": args.jobs,
        "agents": args.agents,
        "succeeded": sum(j["state"] == "succeeded" for j in jobs),
        "seconds": round(elapsed, 3),
        "jobs_per_second": round(args.jobs / elapsed, 1),
        "per_agent": {a.config.agent_id: sum(j["agent_id"] == a.config.agent_id for j in jobs) for a in f.agents},
        "queue_wait_metric": {"count": count, "sum": round(total, 4)},
        "queue_wait_records": {"count": len(waits), "sum": round(sum(waits), 4)},
    }
    problems = []
    if count != len(waits) or count != args.jobs:
        problems.append(f"histogram counted {count} waits, the records hold {len(waits)} of {args.jobs} jobs")
    if abs(total - sum(waits)) > 1e-3 * max(1, len(waits)):
        problems.append(f"histogram sum {total:.4f} s != records' {sum(waits):.4f} s")
    for q in (50, 95):
        estimate = histogram_quantile(buckets, q / 100)
        exact = percentile(waits, q)
        result[f"p{q}_queue_wait_seconds"] = None if estimate is None else round(estimate, 4)
        result[f"p{q}_queue_wait_records"] = None if exact is None else round(exact, 4)
        if estimate is None or exact is None:
            problems.append(f"p{q}: no figure")
            continue
        lo, hi = bucket_of(exact)
        if not lo <= estimate <= hi:
            problems.append(
                f"p{q}: metric says {estimate:.4f} s, outside the bucket ({lo}, {hi}] of the records' {exact:.4f}"
            )
    result["checked_against_records"] = not problems
    result["problems"] = problems
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--vms", type=int, default=16, help="VMs at once per agent")
    ap.add_argument("--concurrency", type=int, default=16, help="webhook deliveries in flight")
    ap.add_argument("--timeout", type=float, default=50.0, help="seconds for all jobs to finish")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    configure("WARNING")
    work = Path(tempfile.mkdtemp(prefix="smith-e2e-"))
    redis = EmbeddedRedis(work / "valkey", port=free_port())
    redis.start()
    try:
        result = asyncio.run(run(args, work, redis.url))
    finally:
        redis.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['jobs']} jobs on {result['agents']} agents {result['per_agent']}: {result['seconds']} s, "
            f"{result['jobs_per_second']} jobs/s; queue wait from /metrics p50 {result['p50_queue_wait_seconds']} s, "
            f"p95 {result['p95_queue_wait_seconds']} s (records: p50 {result['p50_queue_wait_records']} s, "
            f"p95 {result['p95_queue_wait_records']} s)"
        )
        for p in result["problems"]:
            print(f"MISMATCH: {p}")
    if result["problems"] or result["succeeded"] != result["jobs"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
