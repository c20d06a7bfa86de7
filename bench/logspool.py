"""The agent's log spool: how many lines/s ``LogShipper.send()`` takes when each returns only once its line is on
disk (fdatasync'd; concurrent sends share one sync), for 1 job and for several jobs at once, each sending line
after line; then one job's lines as the agent hands them over (``ready_batches`` of a fast guest, ``send_many``).

    uv run python bench/logspool.py                  # 20,000 lines, in a temporary directory
    uv run python bench/logspool.py --dir /var/lib/smith --lines 100000 --jobs 1 8 32

The pipeline is unreachable (nothing listens), so this measures the spool alone: encoding, the write, the sync.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from smith.agent.logship import LogShipper
from smith.asyncutil import ready_batches
from smith.testing.servers import free_port
from smith.wire.guest import GuestEvent

TEXT = "[compiling] src/module_1/file_2.rs -> target/obj_3.o (42 ms) " * 2


def event() -> GuestEvent:
    return GuestEvent(type="line", ts=time.time(), stream="stdout", line=TEXT)


async def run(directory: Path, lines: int, jobs: int) -> float:
    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "t", directory, flush_interval=3600)

    async def job(n: int) -> None:
        for _ in range(lines // jobs):
            await shipper.send(f"bench-{n}", event())

    t0 = time.perf_counter()
    await asyncio.gather(*(job(n) for n in range(jobs)))
    elapsed = time.perf_counter() - t0
    await shipper.close(drain_seconds=0)
    return (lines // jobs) * jobs / elapsed


async def run_batched(directory: Path, lines: int) -> float:
    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "t", directory, flush_interval=3600)

    async def guest() -> AsyncIterator[GuestEvent]:
        for i in range(lines):
            yield event()
            if i % 64 == 0:
                await asyncio.sleep(0)  # a pipe's worth at a time, as a guest's output arrives

    t0 = time.perf_counter()
    async for batch in ready_batches(guest()):
        await shipper.send_many("bench-batched", batch)
    elapsed = time.perf_counter() - t0
    await shipper.close(drain_seconds=0)
    return lines / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=20_000)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--dir", type=Path, default=None, help="where to spool (default: a temporary directory)")
    args = p.parse_args()
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            rate = asyncio.run(run(Path(d), args.lines, jobs))
        print(f"{jobs:>3} job(s): {rate:>9,.0f} lines/s")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        rate = asyncio.run(run_batched(Path(d), args.lines))
    print(f"  1 job as the agent reads it: {rate:>9,.0f} lines/s")


if __name__ == "__main__":
    main()
