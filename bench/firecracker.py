"""Firecracker backend figures against the fake Firecracker (no real VMs here): API round trips, boot, stop.

    uv run python bench/firecracker.py [--vms 5] [--calls 2000]

What it measures is Smith's own overhead: the client over a Unix socket, the boot step sequence, chroot
layout and unwinding. The fake starts in ~0.3 s (a Python interpreter), which dominates "boot"; a real
Firecracker starts in a few ms and boots a minimal guest in ~125 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from smith.adapters.firecracker.client import FirecrackerClient  # noqa: E402
from smith.adapters.firecracker.models import MachineConfiguration  # noqa: E402
from smith.adapters.firecracker.vmm import FirecrackerConfig, FirecrackerVMM  # noqa: E402
from smith.domain.vms import VMShape  # noqa: E402
from smith.testing.firecracker import FakeServer, default_spec_path, write_stand_in  # noqa: E402
from smith.testing.network import MemoryNetwork  # noqa: E402

SPEC = default_spec_path()


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def api_round_trips(base: Path, calls: int) -> None:
    async with FakeServer(base / "api.sock") as _, FirecrackerClient(base / "api.sock") as client:
        times = []
        body = MachineConfiguration(vcpu_count=2, mem_size_mib=1024)
        for _ in range(calls):
            t = time.perf_counter()
            await client.put_machine_config(body)
            times.append(time.perf_counter() - t)
    print(
        f"API PUT /machine-config (validated by the fake) x{calls}: "
        f"p50 {pct(times, 0.5):.2f} ms  p99 {pct(times, 0.99):.2f} ms  "
        f"{calls / sum(times):.0f} calls/s"
    )


async def boots(base: Path, vms: int) -> None:
    kernel, rootfs = base / "vmlinux", base / "initrd.cpio"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    rootfs.write_bytes(b"070701" + b"\0" * 4090)  # an initramfs, as `smith image build` makes
    rootfs.chmod(0o644)
    binary = write_stand_in(base / "firecracker", "--spec", str(SPEC), "--no-guest", "--taps", "ignore")
    config = FirecrackerConfig(
        kernel=kernel, rootfs=rootfs, chroot_base=base / "jails", firecracker_bin=binary, use_jailer=False
    )
    vmm = FirecrackerVMM(config, MemoryNetwork())
    shape = VMShape("bench", 2, 512, disk_mib=1024)
    boot_times, stop_times = [], []
    for i in range(vms):
        t = time.perf_counter()
        machine = await vmm.boot(shape, f"b{i}")
        boot_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        await machine.stop()
        stop_times.append(time.perf_counter() - t)
    print(
        f"sequential boot (fake process start + 10 API calls) x{vms}: "
        f"median {statistics.median(boot_times) * 1000:.0f} ms; stop+cleanup median "
        f"{statistics.median(stop_times) * 1000:.0f} ms"
    )
    t = time.perf_counter()
    machines = await asyncio.gather(*(vmm.boot(shape, f"p{i}") for i in range(vms)))
    parallel = time.perf_counter() - t
    await asyncio.gather(*(m.stop() for m in machines))
    print(f"{vms} boots at once: {parallel * 1000:.0f} ms wall ({parallel / vms * 1000:.0f} ms per VM)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fcb", dir="/tmp"))
    try:
        await api_round_trips(base, args.calls)
        await boots(base, args.vms)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
