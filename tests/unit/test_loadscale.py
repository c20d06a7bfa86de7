"""Time limits under software emulation stretch with the machine's load instead of failing when it is busy."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from smith.adapters.qemu import READY, QemuConfig, QemuVMM, _NoSignOfLife, host_tsc_khz, tsc_args
from smith.domain.vms import VMShape
from smith.loadscale import Budget, slowness


def test_slowness_is_runnable_tasks_per_cpu_and_never_below_one() -> None:
    assert slowness(lambda: (0.2, 0.0, 0.0), lambda: 2) == 1.0
    assert slowness(lambda: (7.0, 0.0, 0.0), lambda: 2) == 4.0
    assert slowness(lambda: (3.0, 0.0, 0.0), lambda: 0) == 4.0  # no CPU count: one

    def no_loadavg() -> tuple[float, float, float]:
        raise OSError("no load average here")

    assert slowness(no_loadavg, lambda: 2) == 1.0


def test_a_budget_lasts_longer_on_a_loaded_machine() -> None:
    quiet, busy = Budget(15, lambda: 1.0), Budget(15, lambda: 4.0)
    for b in (quiet, busy):
        b.spend(30)
    assert quiet.exhausted and not busy.exhausted
    busy.spend(30)
    assert busy.exhausted  # 60 s of wall time at a quarter speed is the 15 s it was given


def vmm(tmp_path: Path, load: float, life: float) -> QemuVMM:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\0")
    true = shutil.which("true")
    assert true is not None
    config = QemuConfig(kernel=kernel, accel="tcg", qemu_bin=true, life_timeout=life, boot_timeout=30)
    return QemuVMM(tmp_path / "vms", config, slowness=lambda: load)


async def guest(reader: asyncio.StreamReader, vm_dir: Path, first_output: float) -> None:
    """A slow guest: prints to its console after ``first_output`` s, announces itself a little later."""
    await asyncio.sleep(first_output)
    (vm_dir / "console.log").write_text("Linux version ...\n")
    await asyncio.sleep(0.2)
    reader.feed_data(b'{"type": "status", ' + READY + b"}\n")


async def test_a_slow_first_console_line_on_a_loaded_machine_is_waited_for(tmp_path: Path) -> None:
    machine = vmm(tmp_path, load=10.0, life=0.3)  # 0.3 s when quiet: 3 s at a tenth of the speed
    reader = asyncio.StreamReader()
    slow = asyncio.ensure_future(guest(reader, tmp_path, first_output=1.0))
    await machine._wait_ready(reader, None, tmp_path, 30)  # type: ignore[arg-type]
    await slow


async def test_a_silent_guest_on_a_quiet_machine_is_still_given_up(tmp_path: Path) -> None:
    machine = vmm(tmp_path, load=1.0, life=0.3)
    with pytest.raises(_NoSignOfLife, match="no console output"):
        await machine._wait_ready(asyncio.StreamReader(), None, tmp_path, 30)  # type: ignore[arg-type]


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2599.998
flags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq

processor\t: 1
cpu MHz\t\t: 1200.000
"""


def test_a_tcg_guest_is_told_the_host_tsc_rate_so_a_busy_host_cannot_stall_its_boot(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert host_tsc_khz(info) == 2_599_998
    info.write_text(CPUINFO.replace(" tsc_known_freq", ""))  # a rate that may be a momentary clock speed
    assert host_tsc_khz(info) is None
    assert host_tsc_khz(tmp_path / "missing") is None
    machine = vmm(tmp_path, load=1.0, life=15)
    shape = VMShape("t", 1, 512)
    tcg = machine.command(tmp_path, shape, "tcg", None, None)
    kvm = machine.command(tmp_path, shape, "kvm", None, None)
    expected = host_tsc_khz()
    append = tcg[tcg.index("-append") + 1]
    assert (f"tsc_early_khz={expected}" in append) if expected else ("tsc_early_khz" not in append)
    assert "tsc_early_khz" not in kvm[kvm.index("-append") + 1]  # KVM guests have kvm-clock
    # ... and that TSC is trusted (no watchdog falling back to jiffies, whose clock runs slow under TCG), only then
    assert tsc_args(2_599_998).split() == ["tsc_early_khz=2599998", "tsc=reliable"] and tsc_args(None) == ""
    assert ("tsc=reliable" in append) == bool(expected) and "tsc=reliable" not in kvm[kvm.index("-append") + 1]


def test_qemu_names_the_virtio_devices_on_the_command_line_for_a_kernel_without_acpi(tmp_path: Path) -> None:
    """Smith's kernel has no ACPI: microvm with acpi=off lists its virtio-mmio devices on the kernel command line
    (virtio_mmio.device=...), as Firecracker does. Debian's kernel finds them in the ACPI tables: ACPI stays on."""
    from smith.adapters.qemu import machine_for

    smith, debian = tmp_path / "smith", tmp_path / "debian"
    smith.mkdir()
    debian.mkdir()
    (smith / "config").write_text("CONFIG_64BIT=y\n# CONFIG_ACPI is not set\n")
    (debian / "config").write_text("CONFIG_64BIT=y\nCONFIG_ACPI=y\n")
    assert "acpi=off" in machine_for(smith / "vmlinux").split(",")
    assert "acpi=off" not in machine_for(debian / "vmlinux") and machine_for(tmp_path / "vmlinux") == machine_for(
        debian / "vmlinux"
    )
    argv = vmm(tmp_path, load=1.0, life=15).command(
        tmp_path, VMShape("t", 1, 512), "tcg", None, None, kernel=smith / "vmlinux"
    )
    assert "acpi=off" in argv[argv.index("-M") + 1].split(",")
