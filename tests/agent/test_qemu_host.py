"""QEMU on real hosts (issue 16, items 13-14): the KVM verdict and snapshot keys. A stand-in qemu binary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smith.adapters import qemu as qemu_module
from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape


def counting_qemu(tmp_path: Path) -> tuple[Path, Path]:
    """A qemu that fails at once (as one refused by /dev/kvm would) and counts its runs."""
    runs = tmp_path / "runs"
    runs.write_text("")
    qemu = tmp_path / "qemu-fails"
    qemu.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'failed to initialize kvm' >&2\nexit 1\n")
    qemu.chmod(0o755)
    return qemu, runs


def make_vmm(tmp_path: Path, **kw: object) -> QemuVMM:
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("kernel")
    return QemuVMM(tmp_path / "vms", QemuConfig(kernel=kernel, **kw))  # type: ignore[arg-type]


async def test_a_failed_kvm_probe_is_never_cached_and_is_said_loudly(tmp_path: Path) -> None:
    qemu, runs = counting_qemu(tmp_path)
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    vmm = make_vmm(tmp_path, qemu_bin=str(qemu), kvm_device=kvm, kvm_retry_seconds=0.0)
    # An older agent's negative verdict on disk is not believed either.
    (tmp_path / "vms" / "accel.json").write_text(json.dumps({"key": vmm._image_key(), "accel": "tcg"}))
    with capture_logs() as logs:
        assert await vmm.accel() == "tcg"
    assert runs.read_text().count("run") == 1
    assert not (tmp_path / "vms" / "accel.json").exists()
    warning = next(e for e in logs if e["log_level"] == "warning")
    assert "SOFTWARE EMULATION" in warning["event"] and "did not boot under it" in warning["why"]
    assert await vmm.accel() == "tcg"
    assert runs.read_text().count("run") == 2  # probed again: the verdict was not kept


async def test_within_the_retry_interval_emulation_is_kept_without_a_probe(tmp_path: Path) -> None:
    qemu, runs = counting_qemu(tmp_path)
    vmm = make_vmm(tmp_path, qemu_bin=str(qemu), kvm_device=tmp_path / "no-kvm", kvm_retry_seconds=3600.0)
    with capture_logs() as logs:
        assert await vmm.accel() == "tcg"
        assert await vmm.accel() == "tcg"
    assert runs.read_text() == ""  # no device: no probe boot
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "kvm group" in warnings[0]["why"]


def versioned_qemu(tmp_path: Path, version: str) -> Path:
    qemu = tmp_path / f"qemu-{version}"
    qemu.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version}'\n")
    qemu.chmod(0o755)
    return qemu


async def test_snapshot_keys_name_the_qemu_build_kernel_and_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    shape = VMShape("x", 1, 256)
    old = await make_vmm(tmp_path, qemu_bin=str(versioned_qemu(tmp_path, "7.2.0"))).snapshot_key(shape, "kvm")
    upgraded = make_vmm(tmp_path, qemu_bin=str(versioned_qemu(tmp_path, "8.2.2")))
    new = await upgraded.snapshot_key(shape, "kvm")
    assert old != new
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2\n\nmodel name\t: AMD EPYC 7B13\n")
    real_cpu_model = qemu_module.cpu_model
    mp.setattr(qemu_module, "cpu_model", lambda: real_cpu_model(cpuinfo))
    on_epyc = await upgraded.snapshot_key(shape, "kvm")
    assert on_epyc != new
    mp.setattr(os, "uname", lambda: type("U", (), {"release": "6.8.0-49-generic"})())
    assert await upgraded.snapshot_key(shape, "kvm") != on_epyc
    assert real_cpu_model(cpuinfo).startswith("AMD EPYC 7B13/")
