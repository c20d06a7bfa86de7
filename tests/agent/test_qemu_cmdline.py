"""The QEMU guest's kernel command line, without booting: what it asks of the kernel under TCG, and the mark a
template guest gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape

SHAPE = VMShape("cmdline", 1, 512)


def append_for(tmp_path: Path, kernel_config: str, accel: str, *, confined: bool = True) -> list[str]:
    kernel = tmp_path / "kernel" / "vmlinux"
    kernel.parent.mkdir(exist_ok=True)
    kernel.write_bytes(b"not booted here")
    (kernel.parent / "config").write_text(kernel_config)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir(exist_ok=True)
    argv = QemuVMM(tmp_path / "base", QemuConfig(kernel=kernel)).command(
        vm_dir, SHAPE, accel, None, None, confined=confined
    )
    return argv[argv.index("-append") + 1].split()


@pytest.mark.parametrize(
    ("config", "accel", "expected"),
    [
        ("\nCONFIG_X86=y\n", "tcg", True),  # Smith's kernel (no ACPI): the PIT ticks, no APIC timer calibration
        ("\nCONFIG_X86=y\n", "kvm", False),  # KVM gives the guest a TSC-deadline timer: nothing to calibrate
        ("\nCONFIG_ACPI=y\n", "tcg", False),  # with ACPI microvm is hardware-reduced: no PIT, the APIC timer it is
    ],
)
def test_the_apic_timer_is_left_out_only_under_tcg_without_acpi(
    tmp_path: Path, config: str, accel: str, expected: bool
) -> None:
    assert ("noapictimer" in append_for(tmp_path, config, accel)) is expected


def test_only_a_template_guest_is_marked_so_its_agent_preloads(tmp_path: Path) -> None:
    assert "smith.template" in append_for(tmp_path, "\nCONFIG_X86=y\n", "tcg", confined=False)
    assert "smith.template" not in append_for(tmp_path, "\nCONFIG_X86=y\n", "tcg")
