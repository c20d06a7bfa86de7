"""Benchmark the GitHub App client against the fake GitHub API (in-process, httpx.ASGITransport).

Figures: App JWT mint time (RS256, 2048-bit key), cached installation-token lookups/s, and runner credentials
(JIT configs) per second with a warm token, serial and 10 at a time. The fake's own work is included, so these
are lower bounds for the client; real GitHub answers in tens of milliseconds, which dominates in production.

    uv run python bench/github.py [--jobs 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from smith.adapters.github import GitHubApp  # noqa: E402
from smith.domain.jobs import Job, JobState  # noqa: E402
from smith.logging import configure  # noqa: E402
from smith.testing.github import FakeGitHub  # noqa: E402


def _job(n: int) -> Job:
    return Job(
        id=f"b{n}",
        state=JobState.ASSIGNED,
        runner_class="smith-2vcpu",
        vcpus=2,
        memory_mib=4096,
        labels=("self-hosted", "smith-2vcpu"),
        repo="bench/app",
        installation_id=1,
    )


async def main(jobs: int) -> dict[str, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fake = FakeGitHub("1", key.public_key())
    fake.add_installation(1, "bench", ["bench/app"])
    out: dict[str, float] = {}
    async with GitHubApp("1", pem, transport=httpx.ASGITransport(app=fake.app)) as client:
        t = time.perf_counter()
        for _ in range(200):
            client.app_jwt()
        out["jwt_mint_ms"] = (time.perf_counter() - t) / 200 * 1000

        await client.installation_token(1)
        t = time.perf_counter()
        for _ in range(100_000):
            await client.installation_token(1)
        out["cached_token_per_s"] = 100_000 / (time.perf_counter() - t)

        t = time.perf_counter()
        for n in range(jobs):
            await client.for_job(_job(n), f"smith-s{n}")
        out["jit_serial_per_s"] = jobs / (time.perf_counter() - t)

        t = time.perf_counter()
        sem = asyncio.Semaphore(10)

        async def one(n: int) -> None:
            async with sem:
                await client.for_job(_job(n), f"smith-c{n}")

        await asyncio.gather(*(one(n) for n in range(jobs)))
        out["jit_10_concurrent_per_s"] = jobs / (time.perf_counter() - t)
        out["token_requests"] = float(len(fake.token_requests()))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure("WARNING")
    figures = asyncio.run(main(args.jobs))
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:28s} {value:12.2f}")
