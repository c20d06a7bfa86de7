"""QEMU on real hosts (issue 16, items 13-14): the KVM verdict and snapshot keys. A stand-in qemu binary."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smith.adapters import cgroups
from smith.adapters import qemu as qemu_module
from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.agent.backends import jailer_parent_cgroup
from smith.domain.vms import VMShape
from smith.errors import VMError


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


def test_a_second_detection_finds_the_delegated_unit_not_the_agents_leaf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = "system.slice/smith-agent.service"
    base = tmp_path / unit
    (base / "agent").mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    for d in (base, base / "agent"):
        (d / "cgroup.controllers").write_text("cpu memory pids\n")
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cgroups, "_own_cgroups", lambda: {"": f"/{unit}/agent"})  # moved there by a first detect
    found = cgroups.Cgroups.detect(None, root=tmp_path)
    assert found is not None and found.parents == (base,)
    assert found.delegated() == unit  # what the jailer gets as --parent-cgroup
    monkeypatch.setattr(cgroups.Cgroups, "detect", classmethod(lambda cls, parent=None, root=None: found))
    if os.geteuid() == 0:
        assert jailer_parent_cgroup(object()) == unit


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes cgroups")
async def test_each_qemu_runs_in_a_cgroup_of_its_own(tmp_path: Path) -> None:
    groups = cgroups.Cgroups.detect()
    if groups is None:
        pytest.skip("no writable cgroup hierarchy here")
    seen = Path(tempfile.mkdtemp(prefix="smith-qcg-", dir="/tmp")) / "seen"
    qemu = tmp_path / "qemu-tells-its-cgroup"
    controller = "memory" if groups.version == 1 else ""
    limit = "memory.limit_in_bytes" if groups.version == 1 else "memory.max"
    mount = f"/sys/fs/cgroup/{controller}".rstrip("/")
    qemu.write_text(
        "#!/bin/sh\n"
        f"cg=$(grep ':{controller}:' /proc/self/cgroup | cut -d: -f3)\n"
        f'echo "$cg $(cat {mount}$cg/{limit})" > {seen}\n'
        "exit 1\n"
    )
    qemu.chmod(0o755)
    vmm = make_vmm(tmp_path, qemu_bin=str(qemu), accel="tcg")
    vmm.cgroups = groups
    with pytest.raises(VMError):
        await vmm.boot(VMShape("c", 1, 256), "cg1")
    where, limit_bytes = seen.read_text().split()
    assert where.endswith(f"/{vmm.cgroup_prefix}cg1")
    assert int(limit_bytes) == (256 + 256 + 512) << 20  # the guest, QEMU, and its translation cache under tcg
    assert groups.find(vmm.cgroup_prefix) == []  # removed with the VM
    shutil.rmtree(seen.parent)


async def test_a_probe_guest_that_shows_no_sign_of_life_is_booted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KVM that runs guests but never lets them print (this machine's PVM) answers the probe at the first boot:
    booting it again (as a job's stalled boot is) cost two more probe timeouts at every agent start."""
    calls: list[object] = []

    async def silent(self: QemuVMM, shape: VMShape, vm_id: str, wait_s: float, how: object) -> None:
        calls.append(how)
        raise qemu_module._NoSignOfLife("no console output")

    monkeypatch.setattr(QemuVMM, "_boot_once", silent)
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    vmm = make_vmm(tmp_path, kvm_device=kvm, kvm_retry_seconds=0.0, boot_attempts=3)
    with capture_logs():
        assert await vmm.accel() == "tcg"
    assert len(calls) == 1
    with pytest.raises(VMError):  # a job's boot still gets its retries
        await vmm.boot(VMShape("c", 1, 256), "job-1")
    assert len(calls) == 1 + 3
