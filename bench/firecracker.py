"""Firecracker backend figures against the fake Firecracker (no real VMs here): API round trips, boot, stop.

    uv run python bench/firecracker.py [--vms 5] [--calls 2000] [--rootfs 5]

``--rootfs N``: boot to the first command of a job from a rootfs version (64 MiB and 2 GiB images, the fake's
guest playing the initramfs) against the initramfs alone, and what a VM's disks cost: ``raw_clone`` of the
2 GiB image on this filesystem, and (as root, with xfsprogs) a reflink on a loop-mounted XFS.

What it measures is Smith's own overhead: the client over a Unix socket, the boot step sequence, chroot
layout and unwinding. The fake starts in ~0.3 s (a Python interpreter), which dominates "boot"; a real
Firecracker starts in a few ms and boots a minimal guest in ~125 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
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


def versions(base: Path) -> Path:
    """Two rootfs versions of a tiny base with 64 MiB of incompressible data: in a 64 MiB+ and a 2 GiB image."""
    from smith.testing.rootfs import small_and_big

    tarball = base / "base.tar"
    with tarfile.open(tarball, "w") as tar:
        for name, data in (("etc/os-release", b"NAME=bench\n"), ("usr/share/blob", os.urandom(64 << 20))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return small_and_big(tarball, base / "rootfs")


async def first_command(vmm: FirecrackerVMM, shape: VMShape, vm_id: str) -> float:
    """Boot, hand over a job, wait for its first line of output: seconds."""
    from smith.wire.agent import JobSpec
    from smith.wire.guest import GuestConfig

    start = time.perf_counter()
    machine = await vmm.boot(shape, vm_id)
    try:
        await machine.assign(
            GuestConfig(job=JobSpec(id=vm_id, runner_class="b", vcpus=2, memory_mib=512, run="echo hi"))
        )
        async for event in machine.events():
            if event.stream == "stdout":
                return time.perf_counter() - start
        raise RuntimeError(f"{vm_id}: no output")
    finally:
        await machine.stop()


@contextlib.contextmanager
def reflink_fs(base: Path) -> Iterator[Path | None]:
    """A loop-mounted XFS with reflinks (root and mkfs.xfs only), else None."""
    mnt = base / "xfs"
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        yield None
        return
    image = base / "xfs.img"
    with image.open("wb") as f:
        f.truncate(6 << 30)
    mnt.mkdir()
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=False).returncode:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def clones(base: Path, image: Path, runs: int) -> None:
    from smith.adapters import vmdisks

    mib = image.stat().st_blocks * 512 >> 20
    print(f"2 GiB rootfs image: {mib} MiB allocated; this filesystem: {fs_type(base)}")
    for where in (base, None):
        with reflink_fs(base) if where is None else contextlib.nullcontext(where) as fs:
            if fs is None:
                print("reflink: no reflink filesystem here (needs root and xfsprogs for a loop-mounted XFS)")
                continue
            source = fs / "src.ext4"
            if fs != base:
                subprocess.run(["cp", "--sparse=always", str(image), str(source)], check=True)
            else:
                source = image
            os.sync()
            times, how = [], ""
            for i in range(runs):
                dest = fs / f"clone{i}.ext4"
                t = time.perf_counter()
                how = vmdisks.raw_clone(source, dest)
                times.append(time.perf_counter() - t)
                dest.unlink()
            figures = f"p50 {pct(times, 0.5):.1f} ms  max {max(times) * 1000:.1f} ms"
            print(f"raw_clone of the 2 GiB image ({how}, {fs_type(fs)}) x{runs}: {figures}")


def fs_type(path: Path) -> str:
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


async def rootfs_boots(base: Path, runs: int) -> None:
    from smith.rootfs import store

    out = versions(base)
    big = store.built(out, "big")
    assert big is not None
    clones(base, big.rootfs, runs)
    kernel, initrd = base / "vmlinux", base / "initrd.cpio"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    initrd.write_bytes(b"070701" + b"\0" * 4090)
    initrd.chmod(0o644)
    binary = write_stand_in(base / "firecracker", "--spec", str(SPEC), "--taps", "ignore")
    shape = VMShape("bench", 2, 512, disk_mib=1024)
    for name in ("initramfs alone", "small", "big"):
        rootfs_dir = None if name == "initramfs alone" else out
        if rootfs_dir is not None:
            store.activate(out, name)
        config = FirecrackerConfig(
            kernel=kernel,
            rootfs=initrd,
            chroot_base=base / "jails",
            firecracker_bin=binary,
            use_jailer=False,
            rootfs_dir=rootfs_dir,
        )
        vmm = FirecrackerVMM(config, MemoryNetwork())
        await first_command(vmm, shape, f"warm-{name[:3]}")  # the scratch template is made once per size
        times = [await first_command(vmm, shape, f"r{i}") for i in range(runs)]
        figures = f"p50 {pct(times, 0.5):.0f} ms  max {max(times) * 1000:.0f} ms"
        print(f"fake boot -> first command, {name} + 1 GiB scratch x{runs}: {figures}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rootfs", type=int, default=0, help="runs per rootfs figure (0: skip)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fcb", dir="/tmp"))
    try:
        await api_round_trips(base, args.calls)
        await boots(base, args.vms)
        if args.rootfs:
            await rootfs_boots(base, args.rootfs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
