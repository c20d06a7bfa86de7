"""Backend choice: what each backend needs, what this machine has, and what `auto` picks, with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smith.adapters.sandbox import SandboxVMM
from smith.agent.backends import probe, select_backend
from smith.agent.settings import AgentSettings
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig


def settings(tmp_path: Path, **kw: object) -> AgentSettings:
    return AgentSettings(agent_work_dir=tmp_path, **kw)


def test_no_firecracker_binary_is_said_plainly(tmp_path: Path) -> None:
    found = probe(settings(tmp_path, agent_firecracker_bin="firecracker-that-does-not-exist"))
    fc = found["backends"]["firecracker"]
    assert fc["available"] is False and "firecracker-that-does-not-exist" in fc["reason"]
    with pytest.raises(ConfigError, match="not available here"):
        select_backend(
            settings(tmp_path, agent_backend="firecracker", agent_firecracker_bin="firecracker-that-does-not-exist")
        )


def test_kvm_off_means_no_firecracker_and_qemu_in_software(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMITH_AGENT_KVM", "off")
    found = probe(settings(tmp_path, agent_firecracker_bin="sh"))  # any binary: KVM is what is missing
    assert found["backends"]["firecracker"] == {"available": False, "reason": "SMITH_AGENT_KVM=off"}
    if shutil.which("qemu-system-x86_64"):
        assert "software emulation" in found["backends"]["qemu"]["reason"]
    if shutil.which("bwrap"):
        assert found["auto"] == "sandbox"  # QEMU without KVM is too slow to be the default


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed")
def test_auto_builds_the_sandbox_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMITH_AGENT_KVM", "off")
    vmm, why = select_backend(settings(tmp_path))
    assert str(vmm.backend) == "sandbox" and why.startswith("auto:") and "weaker" in why


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare (util-linux)")
async def test_without_bwrap_auto_builds_the_sandbox_with_unshare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine with no bubblewrap (only util-linux, as everywhere): `smith dev` and `auto` still get a sandbox."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").symlink_to(str(shutil.which("unshare")))
    monkeypatch.setenv("PATH", str(bin_dir))  # bwrap, qemu and firecracker are not on it
    monkeypatch.setenv("SMITH_AGENT_KVM", "off")
    found = probe(settings(tmp_path))
    assert found["auto"] == "sandbox" and found["backends"]["sandbox"]["launcher"] == "unshare"
    vmm, why = select_backend(settings(tmp_path))
    assert isinstance(vmm, SandboxVMM) and vmm.launcher == "unshare" and "unshare" in why
    machine = await vmm.boot(VMShape("x", 1, 512, disk_mib=64), "nobwrap")
    try:
        await machine.assign(
            GuestConfig(job=JobSpec(id="j", runner_class="x", vcpus=1, memory_mib=512, run="echo ok; hostname"))
        )
        events = [e async for e in machine.events()]
    finally:
        await machine.stop()
    assert [e.line for e in events if e.stream == "stdout"] == ["ok", "smith-nobwrap"], events
