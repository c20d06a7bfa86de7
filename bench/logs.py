"""Log pipeline benchmark: N lines from 8 concurrent jobs into `smith logs serve`, then reads and searches.

    uv run python bench/logs.py --lines 500000        # a short run
    uv run python bench/logs.py                       # 5 million lines (a few minutes)
    uv run python bench/logs.py --clickhouse-url http://127.0.0.1:8123 --clickhouse-password ...

The server runs as its own process (`python -m smith logs serve`, chdb in a temporary data directory unless
--clickhouse-url); this process plays 8 agents, each POSTing its job's lines in order in NDJSON batches and
waiting for each acknowledgement (lines are acknowledged once stored). The bodies are made before the clock
starts, so the load generator's CPU goes to sending them only. Prints lines/s end to end, then p50/p99
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
    """``count`` NDJSON lines of a job from seq ``start``, shaped as the host agent ships them (about 210 bytes
    each, 1 in 10,000 an error)."""
    out = []
    for seq in range(start, start + count):
        if seq % 10_000 == 0:
            text = f"error: test_case_{seq} failed: expected 200, got 503 (segfault in worker {seq % 7})"
        else:
            text = (
                f"[{WORDS[seq % 8]}] src/module_{seq % 997}/file_{seq % 113}.rs -> target/obj_{seq}.o ({seq % 977} ms)"
            )
        out.append(
            b'{"job_id":"%s","seq":%d,"ts":%.6f,"stream":"stdout","host":"bench-host","vm":"vm-%s","step":"build",'
            b'"repo":"acme/app","line":"%s"}' % (job.encode(), seq, t0 + seq * 1e-4, job.encode(), text.encode())
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


def prepare(args: argparse.Namespace) -> list[list[bytes]]:
    """Every job's request bodies, made before the clock starts: the load generator shares the two cores with
    the server, and making the lines costs about a third of what ingesting them does. Real agents make their
    lines on other machines."""
    per_job = args.lines // args.jobs
    t0 = time.time()
    bodies: list[list[bytes]] = [[] for _ in range(args.jobs)]
    for n in range(args.jobs):
        for seq in range(1, per_job + 1, args.batch):
            bodies[n].append(batch(f"bench-{n}", seq, min(args.batch, per_job - seq + 1), t0))
    return bodies


class Connection:
    """A bare HTTP/1.1 keep-alive client for the load generator: httpx costs ~0.5 us of CPU a line at these rates,
    CPU the server then does not get on a two-core machine. (Reads and searches below use httpx.)"""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode())
        self.writer.write(body)
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        content = await self.reader.readexactly(int(got.get("content-length", "0")))
        return int(status_line.split()[1]), got, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def ingest(url: str, args: argparse.Namespace, bodies: list[list[bytes]]) -> tuple[float, int]:
    retries = 0
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def job(n: int) -> None:
        nonlocal retries
        token = tokens.mint_logs(AGENT_SECRET, job_id=f"bench-{n}", agent_id="bench-host", ttl_seconds=7200)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
        conn = Connection(host, int(port))
        try:
            for body in bodies[n]:
                while True:
                    status, got, content = await conn.post("/v1/logs", body, headers)
                    if status == 200:
                        break
                    if status in (429, 503):
                        retries += 1
                        await asyncio.sleep(float(got.get("retry-after", "1")))
                        continue
                    raise SystemExit(f"ingest failed: {status} {content[:300]!r}")
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(job(n) for n in range(args.jobs)))
    return time.perf_counter() - started, retries


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
            t = time.perf_counter()
            bodies = prepare(args)
            size = sum(len(b) for bs in bodies for b in bs)
            print(f"prepared {size / 1e6:,.0f} MB of NDJSON in {time.perf_counter() - t:.1f} s (not timed)")
            server0, client0 = cpu_seconds(proc.pid), cpu_seconds()
            elapsed, retries = asyncio.run(ingest(url, args, bodies))
            del bodies
            server_cpu, client_cpu = cpu_seconds(proc.pid) - server0, cpu_seconds() - client0
            total = (args.lines // args.jobs) * args.jobs
            print(
                f"ingest: {total:,} lines from {args.jobs} jobs in {elapsed:.1f} s = {total / elapsed:,.0f} lines/s "
                f"end to end (acknowledged = stored; {retries} 429/503 retries)"
            )
            print(
                f"cpu: server {server_cpu:.1f} s ({server_cpu / total * 1e6:.1f} us/line, "
                f"{'the ClickHouse server not included' if args.clickhouse_url else 'chdb included'}), "
                f"load generator {client_cpu:.1f} s, on {os.cpu_count()} cores for {elapsed:.1f} s"
            )
            reads(url, args)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
