"""Benchmark host networking: setup, acquire (tap + rule), release, teardown and crash cleanup.

Everything happens inside a throwaway network namespace (root only); nothing touches the host's own network.

    sudo uv run python bench/network.py [--slots 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from smith.adapters.network import HostNetwork, NetworkConfig  # noqa: E402

T = TypeVar("T")


async def timed(fn: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    t0 = time.perf_counter()
    value = await fn()
    return value, (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(netns: str, slots: int) -> dict[str, float]:
    net = HostNetwork(NetworkConfig(netns=netns, host_tcp_ports=(8080, 8081)))
    _, setup_ms = await timed(net.setup)
    acquired, acquire_ms = [], []
    for i in range(slots):
        slot, ms = await timed(lambda i=i: net.acquire(f"vm{i}"))  # type: ignore[misc]
        acquired.append(slot)
        acquire_ms.append(ms)
    release_ms = []
    for slot in acquired:
        _, ms = await timed(lambda slot=slot: net.release(slot))  # type: ignore[misc]
        release_ms.append(ms)
    for i in range(slots):
        await net.acquire(f"again{i}")
    _, teardown_ms = await timed(net.teardown)
    # A crash with every slot in use, then a fresh agent's clean-up.
    crashed = HostNetwork(NetworkConfig(netns=netns))
    await crashed.setup()
    for i in range(slots):
        await crashed.acquire(f"c{i}")
    fresh = HostNetwork(NetworkConfig(netns=netns))
    removed, cleanup_ms = await timed(fresh.cleanup_leftovers)
    assert len(removed) == slots + 3, removed
    return {
        "slots": slots,
        "setup_ms": round(setup_ms, 1),
        "acquire_p50_ms": round(statistics.median(acquire_ms), 1),
        "acquire_p95_ms": round(pct(acquire_ms, 0.95), 1),
        "release_p50_ms": round(statistics.median(release_ms), 1),
        "release_p95_ms": round(pct(release_ms, 0.95), 1),
        "teardown_ms_with_all_slots": round(teardown_ms, 1),
        "cleanup_ms_after_crash": round(cleanup_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slots", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: creates a network namespace, a bridge and taps")
    netns = f"smbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        figures = asyncio.run(bench(netns, args.slots))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
