"""Sticky disks under QEMU: a job writes, the next job of the repository reads it; a failed job's writes vanish."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuMachine, QemuVMM
from smith.domain.sticky import StickyPlan, StickyRequest
from tests.agent.test_qemu_rootfs import SHAPE, base_dir, image, job, output, pytestmark, rootfs, vmm  # noqa: F401

PLAN = StickyPlan("acme", "acme/app", (StickyRequest("deps", "/cache", 64),))


async def run(qemu: QemuVMM, vm_id: str, script: str) -> tuple[list[str], int | None, list[str]]:
    machine: QemuMachine = await qemu.boot(SHAPE, vm_id, sticky=PLAN)
    try:
        await machine.assign(job(script))
        lines, code = await output(machine)
        committed = await machine.finish(code == 0)
    finally:
        await machine.stop()
    return lines, code, committed


def current(qemu: QemuVMM, name: str = "deps") -> Path:
    disk = qemu.sticky_store.disk_dir("acme", "acme/app", name)
    return (disk / "current").resolve()


def cat(disk: Path, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)], capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.slow
async def test_a_job_writes_a_sticky_disk_and_the_next_job_reads_it(vmm: QemuVMM, base_dir: Path) -> None:  # noqa: F811
    lines, code, committed = await run(vmm, "w", "echo 'from job 1' > /cache/note; git --version > /cache/tool")
    assert code == 0 and committed == ["deps"], lines
    assert cat(current(vmm), "/note") == "from job 1\n"
    lines, code, _ = await run(vmm, "r", "cat /cache/note; echo second >> /cache/note")
    assert code == 0 and lines == ["from job 1"], lines
    assert cat(current(vmm), "/note") == "from job 1\nsecond\n"
    disk = current(vmm).parent
    assert [p.name for p in disk.glob("gen-*")] == [current(vmm).name]  # older states collected
    assert not list((disk / "refs").iterdir()) and not list(base_dir.glob("qemu-*"))


@pytest.mark.slow
async def test_a_failed_jobs_writes_are_discarded(vmm: QemuVMM, base_dir: Path) -> None:  # noqa: F811
    lines, code, committed = await run(vmm, "f", "echo half-done > /cache/note; exit 3")
    assert code == 3 and committed == [], lines
    first = current(vmm)  # the empty state made at first use, unchanged
    assert cat(first, "/note") == ""
    assert [p.name for p in first.parent.glob("gen-*")] == [first.name]
    assert not list((first.parent / "refs").iterdir()) and not list(base_dir.glob("qemu-*"))
