"""The agent's log spool: how many lines/s ``LogShipper.send()`` takes when each returns only once its line is on
disk (fdatasync'd; concurrent sends share one sync), for 1 job and for several jobs at once.

    uv run python bench/logspool.py                  # 20,000 lines, in a temporary directory
    uv run python bench/logspool.py --dir /var/lib/smith --lines 100000 --jobs 1 8 32

The pipeline is unreachable (nothing listens), so this measures the spool alone: encoding, the write, the sync.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from smith.agent.logship import LogShipper
from smith.testing.servers import free_port
from smith.wire.guest import GuestEvent


async def run(directory: Path, lines: int, jobs: int) -> float:
    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "t", directory, flush_interval=3600)
    text = "[compiling] src/module_1/file_2.rs -> target/obj_3.o (42 ms) " * 2

    async def job(n: int) -> None:
        for _i in range(lines // jobs):
            await shipper.send(f"bench-{n}", GuestEvent(type="line", ts=time.time(), stream="stdout", line=text))

    t0 = time.perf_counter()
    await asyncio.gather(*(job(n) for n in range(jobs)))
    elapsed = time.perf_counter() - t0
    await shipper.close(drain_seconds=0)
    return (lines // jobs) * jobs / elapsed


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


if __name__ == "__main__":
    main()
