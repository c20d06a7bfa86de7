"""A job never sees the agent's credentials, on any backend: planted in the agent's environment, they appear
nowhere a job can look (its environment, every /proc/*/environ and cmdline it can read, readable files), nor in
a VMM's own environment, nor in what reaches a guest (MMDS, the kernel command line)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.adapters.sandbox import SandboxVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.wire.agent import JobSpec, ServiceAccess
from smith.wire.guest import GuestConfig, GuestEvent
from tests.agent.firecracker_support import SHAPE as FC_SHAPE
from tests.agent.firecracker_support import guest_config, make_rig
from tests.agent.leaks import ENV_ONLY, HUNT, found, job_output, plant


def config(run: str) -> GuestConfig:
    return GuestConfig(
        job=JobSpec(id="leak", runner_class="x", vcpus=1, memory_mib=512, run=run),
        cache=ServiceAccess(url="http://cache", token="per-job-cache-token"),
    )


async def run(machine: object, cfg: GuestConfig) -> list[GuestEvent]:
    try:
        await machine.assign(cfg)  # type: ignore[attr-defined]
        return [e async for e in machine.events()]  # type: ignore[attr-defined]
    finally:
        await machine.stop()  # type: ignore[attr-defined]


async def test_a_sandbox_job_sees_none_of_the_agents_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, launcher: str
) -> None:
    values = plant(monkeypatch)
    vmm = SandboxVMM(tmp_path / "sbx", launcher=launcher)
    text = job_output(await run(await vmm.boot(VMShape("x", 1, 1024), "leak"), config(HUNT)))
    assert found(values, text) == []
    assert "ACTIONS_RUNTIME_TOKEN=***" in text  # what the job is meant to have is there (masked in its log)


async def test_a_firecracker_vmm_and_its_guest_see_none_of_the_agents_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = plant(monkeypatch)
    for rig in make_rig():
        machine = await rig.vmm.boot(FC_SHAPE, "leak")
        try:
            assert machine.process is not None
            vmm_env = Path(f"/proc/{machine.process.pid}/environ").read_bytes().decode(errors="replace")
            assert "PATH=" in vmm_env and found(values, vmm_env) == []
        except BaseException:
            await machine.stop()
            raise
        cfg = guest_config(ENV_ONLY).model_copy(update={"cache": ServiceAccess(url="http://c", token="tok-CACHE")})
        text = job_output(await run(machine, cfg))
        assert found(values, text) == []
        sent = "\n".join(str(call) for call in rig.calls("smith-leak"))  # every API body: MMDS, boot args, drives
        assert "/mmds" in sent and found(values, sent) == []


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))  # Unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.timeout(1500)  # software emulation on a loaded 2-core machine: a cold boot took 190 s here
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64 (qemu-system-x86)")
async def test_a_qemu_vm_and_its_guest_see_none_of_the_agents_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path
) -> None:
    try:
        image = build_image(tmp_path, find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    values = plant(monkeypatch)
    qemu = QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg", life_timeout=400, boot_timeout=1000)
    vmm = QemuVMM(short_dir, qemu)
    machine = await vmm.boot(VMShape("x", 1, 512), "leak")
    try:
        vm_dir = next(short_dir.glob("*leak"))
        qemu_env = Path(f"/proc/{(vm_dir / 'pid').read_text()}/environ").read_bytes().decode(errors="replace")
        assert "PATH=" in qemu_env and found(values, qemu_env) == []
        assert found(values, (vm_dir / "cmdline").read_text()) == []
    except BaseException:
        await machine.stop()  # never leave a VM running
        raise
    text = job_output(await run(machine, config(HUNT)))
    assert found(values, text) == []
