"""VM backend start-up: time from "give me a machine" (or from assign, when pre-booted) to the guest's first line.

    uv run python bench/vms.py [--sandbox N] [--qemu N] [--kernel debian|smith|both] [--stages]

- sandbox cold: boot() + assign() -> first output line
- sandbox warm: boot() done beforehand (a warm pool); assign() -> first output line
- qemu cold:    boot() (software emulation unless KVM boots guests here) + assign() -> first line
- qemu restore: boot() from a saved template + assign() -> first line
- qemu disks:   cold boot from a rootfs version (ext4 root under a per-VM qcow2 layer, scratch disk at /work),
                with the image at its own size and grown to 2 GiB: start cost must not depend on it
- disk clones:  per-VM qcow2 layers and a Firecracker raw clone (reflink or sparse copy) of a 2 GiB image
- --kernel:     the QEMU figures with Debian's kernel, Smith's (`smith image kernel`, from SMITH_DATA_DIR), or both
                in one run (A/B under the same load); --stages prints one cold boot's timeline (guest printk
                times of the kernel's and init's milestones, host times of ready and the first line)
Bounded: a handful of runs each; prints p50/p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.adapters.sandbox import SandboxVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import GuestImage, build_image, find_inputs, unpack_cpio
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
    ap.add_argument("--disks", type=int, default=3, help="runs per rootfs-disk figure (0: skip)")
    ap.add_argument("--kernel", choices=("debian", "smith", "both"), default="debian", help="guest kernel(s)")
    ap.add_argument("--stages", action="store_true", help="print one cold boot's timeline per kernel")
    ap.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto", help="tcg: skip the KVM probe")
    args = ap.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = Path(tempfile.mkdtemp(prefix="sb", dir="/tmp"))
    try:
        if shutil.which("bwrap") and args.sandbox > 0:
            sbx = SandboxVMM(base / "sandbox")
            report("sandbox cold -> first line", [await timed(sbx, i, False) for i in range(args.sandbox)])
            report("sandbox warm -> first line", [await timed(sbx, i, True) for i in range(args.sandbox)])
        elif args.sandbox > 0:
            print("sandbox: no bwrap, skipped")
        if shutil.which("qemu-system-x86_64") and (args.qemu > 0 or args.disks > 0):
            try:
                images = {name: build_image(base / "data", find_inputs(kernel=k)) for name, k in kernels(args.kernel)}
            except ConfigError as exc:
                print(f"qemu: skipped ({exc.message})")
                return
            if args.disks > 0:
                await disks(next(iter(images.values())), base, args.disks, args.accel)
            for name, image in images.items():
                if args.stages:
                    await stages(name, image, base / f"s-{name}", args.accel)
                if args.qemu > 0:
                    await qemu_figures(name, image, base / f"q-{name}", args.qemu, args.accel)
        else:
            print("qemu: no qemu-system-x86_64, skipped")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def kernels(which: str) -> list[tuple[str, Path | None]]:
    """(label, kernel) pairs: Debian's newest in /boot (None), Smith's built one."""
    from smith.images.kernel import current_kernel
    from smith.settings import CommonSettings

    out: list[tuple[str, Path | None]] = []
    if which in ("debian", "both"):
        out.append(("debian", None))
    if which in ("smith", "both"):
        smith = current_kernel(CommonSettings().data_dir)
        if smith is None:
            raise ConfigError("no Smith kernel built (run `smith image kernel`)")
        out.append(("smith", smith.vmlinux))
    return out


async def qemu_figures(name: str, image: GuestImage, base: Path, runs: int, accel: str = "auto") -> None:
    vmm = QemuVMM(base, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel=accel))
    accel = await vmm.accel()
    report(f"qemu {name} cold ({accel}) -> first", [await timed(vmm, i, False) for i in range(runs)])
    start = time.perf_counter()
    await vmm.prepare_snapshot(SHAPE)
    print(f"{'qemu template save':<28} {1000 * (time.perf_counter() - start):.0f} ms (once per shape)")
    size = next((base / "snapshots").glob("*.state")).stat().st_size
    print(f"{'qemu template size':<28} {size / 2**20:.1f} MiB")
    report(f"qemu {name} restore -> first", [await timed(vmm, 100 + i, False) for i in range(runs * 3)])
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


STAGES = re.compile(r"^\[\s*(\d+\.\d+)\] (Run /init as init process|smith: .*)$", re.M)


async def stages(name: str, image: GuestImage, base: Path, accel: str = "auto") -> None:
    """One cold boot, verbose (loglevel=8: init's KERN_DEBUG marks show): where its time went."""
    from smith.adapters.qemu import DEFAULT_APPEND

    append = DEFAULT_APPEND.replace("quiet", "loglevel=8")
    vmm = QemuVMM(base, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, append=append, accel=accel))
    await vmm.accel()  # the KVM probe (a minute where /dev/kvm cannot boot guests) is not the boot's
    start = time.perf_counter()
    machine = await vmm.boot(SHAPE, "stages")
    ready = time.perf_counter() - start
    await machine.assign(job(0))
    await first_line(machine)
    line = time.perf_counter() - start
    console = (machine.dir / "console.log").read_text(errors="replace")
    await machine.stop()
    print(f"stages ({name} kernel), guest printk time / host time since spawn:")
    for match in STAGES.finditer(console):
        print(f"  guest {float(match.group(1)):7.3f} s  {match.group(2)}")
    print(f"  host  {ready:7.3f} s  agent ready (announced)\n  host  {line:7.3f} s  first line of the job")


def rootfs_versions(image: GuestImage, base: Path) -> Path:
    """Two versions of a tiny rootfs (the initramfs's tree: busybox, python3, the agent): as is, and 2 GiB."""
    from smith.rootfs import store
    from smith.testing.rootfs import small_and_big

    tree = base / "tree"
    tree.mkdir()
    unpack_cpio(image.initrd, tree)
    tarball = base / "base.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    out = small_and_big(tarball, base / "rootfs")
    store.activate(out, "small")
    return out


async def disks(image: GuestImage, base: Path, runs: int, accel: str = "auto") -> None:
    from smith.adapters import vmdisks
    from smith.rootfs import store

    out = rootfs_versions(image, base)
    big = store.built(out, "big")
    assert big is not None
    print(f"{'rootfs 2 GiB image':<28} allocated {big.rootfs.stat().st_blocks * 512 / 2**20:.0f} MiB")
    vmm = QemuVMM(base / "qd", QemuConfig(kernel=image.vmlinux, initrd=image.initrd, rootfs_dir=out, accel=accel))
    accel = await vmm.accel()
    for name in ("small", "big"):
        store.activate(out, name)
        samples = [await timed(vmm, 200 + i, False) for i in range(runs)]
        report(f"qemu disks {name} ({accel}) -> first", samples)
    layers, clones = [], []
    for i in range(max(runs, 5)):
        vm = base / f"clone{i}"
        vm.mkdir()
        start = time.perf_counter()
        vmdisks.qemu_disks(vm, big.rootfs, SHAPE.disk_mib, base / "cache")
        layers.append(time.perf_counter() - start)
        start = time.perf_counter()
        how = vmdisks.raw_clone(big.rootfs, vm / "raw.ext4")
        clones.append(time.perf_counter() - start)
    report("qcow2 root+scratch, 2 GiB", layers)
    report(f"raw clone ({how}), 2 GiB", clones)


if __name__ == "__main__":
    asyncio.run(main())
