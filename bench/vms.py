"""VM backend start-up: time from "give me a machine" (or from assign, when pre-booted) to the guest's first line.

    uv run python bench/vms.py [--sandbox N] [--qemu N]

- sandbox cold: boot() + assign() -> first output line
- sandbox warm: boot() done beforehand (a warm pool); assign() -> first output line
- qemu cold:    boot() (software emulation unless KVM boots guests here) + assign() -> first line
- qemu restore: boot() from a saved template + assign() -> first line
Bounded: a handful of runs each; prints p50/p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.adapters.sandbox import SandboxVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig

SHAPE = VMShape("bench", 1, 512)


def job(i: int) -> GuestConfig:
    return GuestConfig(job=JobSpec(id=f"b{i}", runner_class="bench", vcpus=1, memory_mib=512, run="echo first"))


async def first_line(machine: Any) -> None:
    async for event in machine.events():
        if event.type == "line":
            break


async def timed(vmm: Any, i: int, warm: bool) -> float:
    if warm:
        machine = await vmm.boot(SHAPE, f"w{i}")
        start = time.perf_counter()
    else:
        start = time.perf_counter()
        machine = await vmm.boot(SHAPE, f"c{i}")
    await machine.assign(job(i))
    await first_line(machine)
    took = time.perf_counter() - start
    await machine.stop()
    return took


def report(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{name:<28} n={len(ms):<3} p50={statistics.median(ms):8.1f} ms  p95={p95:8.1f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandbox", type=int, default=20, help="runs per sandbox figure")
    ap.add_argument("--qemu", type=int, default=3, help="runs per QEMU figure (cold boots are seconds each)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sb", dir="/tmp"))
    try:
        if shutil.which("bwrap"):
            sbx = SandboxVMM(base / "sandbox")
            report("sandbox cold -> first line", [await timed(sbx, i, False) for i in range(args.sandbox)])
            report("sandbox warm -> first line", [await timed(sbx, i, True) for i in range(args.sandbox)])
        else:
            print("sandbox: no bwrap, skipped")
        if shutil.which("qemu-system-x86_64") and args.qemu > 0:
            try:
                image = build_image(base / "data", find_inputs())
            except ConfigError as exc:
                print(f"qemu: skipped ({exc.message})")
                return
            vmm = QemuVMM(base / "q", QemuConfig(kernel=image.vmlinux, initrd=image.initrd))
            accel = await vmm.accel()
            report(f"qemu cold ({accel}) -> first line", [await timed(vmm, i, False) for i in range(args.qemu)])
            start = time.perf_counter()
            await vmm.prepare_snapshot(SHAPE)
            print(f"{'qemu template save':<28} {1000 * (time.perf_counter() - start):.0f} ms (once per shape)")
            size = next((base / "q" / "snapshots").glob("*.state")).stat().st_size
            print(f"{'qemu template size':<28} {size / 2**20:.1f} MiB")
            report(f"qemu restore ({accel}) -> first", [await timed(vmm, 100 + i, False) for i in range(args.qemu * 3)])
        else:
            print("qemu: no qemu-system-x86_64, skipped")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
