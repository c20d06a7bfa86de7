"""Log pipeline benchmark: N lines from 8 concurrent jobs into `smith logs serve`, then reads and searches.

    uv run python bench/logs.py --lines 500000        # a short run
    uv run python bench/logs.py                       # 5 million lines (a few minutes)
    uv run python bench/logs.py --clickhouse-url http://127.0.0.1:8123 --clickhouse-password ...

The server runs as its own process (`python -m smith logs serve`, chdb in a temporary data directory unless
--clickhouse-url); this process plays 8 agents, each POSTing its job's lines in order in NDJSON batches and
waiting for each acknowledgement (lines are acknowledged once stored). Prints lines/s end to end, then p50/p99
of reading the last 1,000 lines of one job and of text searches over all lines, both over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from smith import tokens
from smith.testing.servers import free_port, wait_ready

AGENT_SECRET = "bench-agent-secret-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef012345"
WORDS = ("compiling", "linking", "downloading", "resolving", "testing", "packaging", "uploading", "caching")


def batch(job: str, start: int, count: int, t0: float) -> bytes:
    """``count`` NDJSON lines of a job from seq ``start`` (about 150 bytes each, 1 in 10,000 an error)."""
    out = []
    for seq in range(start, start + count):
        if seq % 10_000 == 0:
            text = f"error: test_case_{seq} failed: expected 200, got 503 (segfault in worker {seq % 7})"
        else:
            text = (
                f"[{WORDS[seq % 8]}] src/module_{seq % 997}/file_{seq % 113}.rs -> target/obj_{seq}.o ({seq % 977} ms)"
            )
        out.append(
            b'{"job_id":"%s","seq":%d,"ts":%.6f,"stream":"stdout","step":"build","repo":"acme/app","line":"%s"}'
            % (job.encode(), seq, t0 + seq * 1e-4, text.encode())
        )
    return b"\n".join(out)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def start_server(port: int, data: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SMITH_DATA_DIR": str(data),
        "SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET,
        "SMITH_JWT_SECRET": JWT_SECRET,
        "SMITH_LOG_LEVEL": "WARNING",
    }
    if args.clickhouse_url:
        env["SMITH_CLICKHOUSE_URL"] = args.clickhouse_url
        env["SMITH_CLICKHOUSE_PASSWORD"] = args.clickhouse_password
        env["SMITH_CLICKHOUSE_DATABASE"] = f"bench_{int(time.time())}"
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "smith", "logs", "serve", "--port", str(port)], env=env, stderr=log)
    if wait_ready(f"http://127.0.0.1:{port}/readyz", proc):
        return proc
    proc.kill()
    sys.exit(f"server did not start: {(data / 'server.log').read_text()[-2000:]}")


async def ingest(url: str, args: argparse.Namespace) -> tuple[float, int]:
    per_job = args.lines // args.jobs
    t0 = time.time()
    retries = 0
    headers = {
        "Authorization": "Bearer "
        + tokens.mint(AGENT_SECRET, scope="agent", subject="bench", ttl_seconds=7200, agent_id="bench-host"),
        "Content-Type": "application/x-ndjson",
    }

    async def job(n: int, client: httpx.AsyncClient) -> None:
        nonlocal retries
        name = f"bench-{n}"
        seq = 1
        while seq <= per_job:
            count = min(args.batch, per_job - seq + 1)
            body = batch(name, seq, count, t0)
            while True:
                r = await client.post(f"{url}/v1/logs", content=body, headers=headers)
                if r.status_code == 200:
                    break
                if r.status_code in (429, 503):
                    retries += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                raise SystemExit(f"ingest failed: {r.status_code} {r.text[:300]}")
            seq += count

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=args.jobs)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(job(n, client) for n in range(args.jobs)))
        elapsed = time.perf_counter() - started
    return elapsed, retries


def reads(url: str, args: argparse.Namespace) -> None:
    op = tokens.mint(JWT_SECRET, scope="operator", subject="bench", ttl_seconds=3600)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {op}"}, timeout=120) as c:
        tail: list[float] = []
        for i in range(args.reads):
            t = time.perf_counter()
            r = c.get(f"/v1/jobs/bench-{i % args.jobs}/logs", params={"tail": 1000})
            tail.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and len(r.json()["lines"]) == min(1000, args.lines // args.jobs)
        print(f"tail 1,000 lines of one job over HTTP: p50 {pct(tail, 50):.1f} ms  p99 {pct(tail, 99):.1f} ms")
        for label, q in (("rare text (1 line in 10,000)", "segfault in worker"), ("absent text", "zebra-quux")):
            times: list[float] = []
            hits = 0
            for _ in range(args.searches):
                t = time.perf_counter()
                r = c.get("/v1/logs/search", params={"q": q, "since": "1d", "limit": 100})
                times.append((time.perf_counter() - t) * 1000)
                hits = len(r.json()["hits"])
            print(
                f"search {label} over all {args.lines:,} lines: p50 {pct(times, 50):.1f} ms  "
                f"p99 {pct(times, 99):.1f} ms  ({hits} hits shown)"
            )
        st = c.get("/v1/logs/stats").json()
        print(
            f"server: {st['batches']} inserts, {st['written'] / max(1, st['batches']):,.0f} lines each on average, "
            f"{st['duplicates']} duplicates, {st['rejected']} lines pushed back (429)"
        )
        s = c.get("/v1/jobs/bench-0/logs/summary").json()
        t = time.perf_counter()
        c.get("/v1/jobs/bench-0/logs/summary")
        print(f"summary of one job ({s['lines']:,} lines): {(time.perf_counter() - t) * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=5_000_000, help="Total lines (default 5,000,000)")
    ap.add_argument("--jobs", type=int, default=8, help="Concurrent jobs (default 8)")
    ap.add_argument("--batch", type=int, default=5000, help="Lines per POST (default 5000)")
    ap.add_argument("--reads", type=int, default=200, help="Tail reads to time")
    ap.add_argument("--searches", type=int, default=20, help="Searches to time, per kind")
    ap.add_argument("--clickhouse-url", default="", help="Use this ClickHouse server instead of chdb")
    ap.add_argument("--clickhouse-password", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smith-bench-logs-") as tmp:
        port = free_port()
        proc = start_server(port, Path(tmp), args)
        url = f"http://127.0.0.1:{port}"
        try:
            server0, client0 = cpu_seconds(proc.pid), cpu_seconds()
            elapsed, retries = asyncio.run(ingest(url, args))
            server_cpu, client_cpu = cpu_seconds(proc.pid) - server0, cpu_seconds() - client0
            total = (args.lines // args.jobs) * args.jobs
            print(
                f"ingest: {total:,} lines from {args.jobs} jobs in {elapsed:.1f} s = {total / elapsed:,.0f} lines/s "
                f"end to end (acknowledged = stored; {retries} 429/503 retries)"
            )
            print(
                f"cpu: server {server_cpu:.1f} s ({server_cpu / total * 1e6:.1f} us/line, chdb included), "
                f"load generator {client_cpu:.1f} s, on {os.cpu_count()} cores for {elapsed:.1f} s"
            )
            reads(url, args)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
