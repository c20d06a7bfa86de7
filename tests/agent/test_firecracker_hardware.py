"""Real Firecracker on real KVM (skipped unless this host has both): boot Smith's image, run a job to its exit
event, and see Firecracker exit by itself within a second of it (the guest's init reboots, ``reboot=k``); run a
workflow job whose steps go over the guest's vsock connection.

For users with a KVM host and the binaries (see docs/parts/firecracker.md, "Testing on real hardware")::

    sudo SMITH_TEST_FIRECRACKER=/usr/local/bin/firecracker SMITH_TEST_JAILER=/usr/local/bin/jailer \\
        uv run pytest tests/agent/test_firecracker_hardware.py -m "firecracker and kvm" -v

The image is ``SMITH_TEST_FC_KERNEL`` (an uncompressed vmlinux) and ``SMITH_TEST_FC_ROOTFS`` (the initramfs)
when set, else built here as ``smith image build`` does (needs linux-image-amd64, busybox-static, python3).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.firecracker.network import TapNetwork
from smith.adapters.firecracker.vmm import FirecrackerConfig, FirecrackerVMM
from smith.agent.backends import _kvm_usable
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.workflows.context import RunInfo
from smith.workflows.executor import Executor
from smith.workflows.machines import vm_sessions
from smith.workflows.parser import parse
from smith.workflows.report import ConsoleReporter
from tests.agent.firecracker_support import guest_config


def _binary(env: str, name: str) -> str | None:
    return os.environ.get(env) or shutil.which(name)


def _why_not() -> str:
    kvm, why = _kvm_usable()
    if not kvm:
        return f"needs a KVM host that boots normal guests: {why}"
    if _binary("SMITH_TEST_FIRECRACKER", "firecracker") is None:
        return "needs the firecracker binary (SMITH_TEST_FIRECRACKER or on PATH)"
    if _binary("SMITH_TEST_JAILER", "jailer") is None:
        return "needs the jailer binary (SMITH_TEST_JAILER or on PATH)"
    if os.geteuid() != 0:
        return "needs root (the jailer chroots and the tap is made with ip)"
    return ""


pytestmark = [
    pytest.mark.firecracker,
    pytest.mark.kvm,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "runs"),
]


def _image(tmp: Path) -> tuple[Path, Path]:
    kernel, rootfs = os.environ.get("SMITH_TEST_FC_KERNEL"), os.environ.get("SMITH_TEST_FC_ROOTFS")
    if kernel and rootfs:
        return Path(kernel), Path(rootfs)
    try:
        image = build_image(tmp / "images", find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    return image.vmlinux, image.initrd


def _vmm(base: Path) -> FirecrackerVMM:
    """Real Firecracker, jailed, on Smith's image, with taps of its own /28."""
    kernel, rootfs = _image(base)
    for path in (kernel, rootfs):
        path.chmod(0o644)  # shared into the jail: world-readable, not writable by the jail user
    config = FirecrackerConfig(
        kernel=kernel,
        rootfs=rootfs,
        chroot_base=base / "jails",
        firecracker_bin=Path(_binary("SMITH_TEST_FIRECRACKER", "firecracker") or ""),
        jailer_bin=Path(_binary("SMITH_TEST_JAILER", "jailer") or ""),
        use_jailer=True,
    )
    (base / "jails").mkdir()
    return FirecrackerVMM(config, TapNetwork("172.31.250.0/28"))


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sfc", dir=os.environ.get("SMITH_TEST_FC_CHROOT_DIR", "/var/tmp")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_job_runs_and_firecracker_exits_within_a_second_of_its_exit_event(base: Path) -> None:
    vmm = _vmm(base)
    machine = await vmm.boot(VMShape("hw", 1, 512, disk_mib=64), "hw-1")
    proc = machine.process
    assert proc is not None
    try:
        await machine.assign(guest_config("echo hello-from-firecracker; uname -r"))
        events = []
        async for event in machine.events():
            events.append(event)
        exit_seen = time.monotonic()
        assert events[-1].type == "exit" and events[-1].exit_code == 0
        assert "hello-from-firecracker" in [e.line for e in events if e.stream == "stdout"]
        # The image loads the guest's vsock modules: its events came over vsock, not the console.
        assert machine.console is not None and machine.console.over_channel
        await asyncio.wait_for(proc.wait(), 10)
        assert time.monotonic() - exit_seen < 1.0, "Firecracker kept running after the guest's job was done"
    finally:
        await machine.stop()


WORKFLOW = """
on: push
jobs:
  vm:
    runs-on: x
    outputs:
      release: ${{ steps.uname.outputs.release }}
    steps:
      - id: uname
        run: echo "release=$(uname -r)" >> "$GITHUB_OUTPUT"
      - continue-on-error: true
        run: seq 1 20000; exit 3
      - env:
          TOKEN: ${{ secrets.S }}
        run: echo "release ${{ steps.uname.outputs.release }} token=$TOKEN"
"""


async def test_a_workflow_job_runs_its_steps_over_vsock(base: Path) -> None:
    """The host drives the steps on the guest agent's vsock connection (real Firecracker, real guest kernel)."""
    info = RunInfo(base, "o/r", "push", {}, "0" * 40, "refs/heads/main", "wf", "wf.yml", secrets={"S": "hush-hush"})
    out = io.StringIO()
    sessions = vm_sessions(_vmm(base), VMShape("hw", 1, 512, disk_mib=64))
    result = await Executor(info, parse(WORKFLOW), sessions, ConsoleReporter(out)).run()
    log = out.getvalue()
    assert result.conclusion == "success", log
    release = result.jobs[0].outputs["release"]
    assert release and f"release {release} token=***" in log and "hush-hush" not in log
    assert "    20000" in log  # every line of the long step came over vsock
