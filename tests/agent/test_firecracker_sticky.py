"""Sticky disks on Firecracker: a raw clone of the disk's last committed state as an extra drive in the jail,
committed back (renamed into the store) when the job succeeded and the guest shut down cleanly, else discarded.

The fake's guest runs the job on the host, not on the disk, so what a job writes to its sticky disk is written
here into the VM's clone with debugfs while the VM runs (what the guest's kernel would have done), and the job
itself decides success or failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.firecracker.vmm import FirecrackerMachine, FirecrackerVMM
from smith.domain.sticky import StickyPlan, StickyRequest
from smith.errors import VMError
from smith.rootfs import store
from tests.agent.firecracker_support import SHAPE, Rig, guest_config, make_rig
from tests.agent.test_firecracker_rootfs import rootfs_dir  # noqa: F401  (the module-scoped rootfs fixture)

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("mkfs.ext4", "debugfs", "e2fsck")), reason="needs e2fsprogs"
)
PLAN = StickyPlan("acme", "acme/app", (StickyRequest("deps", "/cache", 16),))


@pytest.fixture
def rig(rootfs_dir: Path) -> Iterator[Rig]:  # noqa: F811
    store.activate(rootfs_dir, "v1")
    yield from make_rig(rootfs_dir=rootfs_dir, shutdown_timeout=10.0)


def write(disk: Path, path: str, text: str) -> None:
    src = disk.with_name("payload")
    src.write_text(text)
    subprocess.run(["debugfs", "-w", "-R", f"write {src} {path}", str(disk)], capture_output=True, check=True)
    src.unlink()


def cat(disk: Path, path: str) -> str | None:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)], capture_output=True, text=True, check=False)
    return None if "not found" in done.stderr else done.stdout


def current(vmm: FirecrackerVMM) -> Path:
    return (vmm.sticky_store.disk_dir("acme", "acme/app", "deps") / "current").resolve()


async def job(machine: FirecrackerMachine, script: str) -> int | None:
    await machine.assign(guest_config(script))
    return next(e.exit_code for e in [x async for x in machine.events()] if e.type == "exit")


async def test_a_job_writes_its_sticky_disk_and_the_next_job_finds_it(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "s1", sticky=PLAN)
    try:
        drives = [c["body"] for c in rig.calls("smith-s1") if c["path"].startswith("/drives/")]
        assert [d["drive_id"] for d in drives] == ["rootfs", "scratch", "sticky_0"]
        assert not drives[2]["is_read_only"] and not drives[2]["is_root_device"]
        clone = Path(str(drives[2]["path_on_host"]))
        assert clone.parent == machine.jail.host(".")
        assert {"smith.vdc=smith-sticky-0", "smith.mount.smith-sticky-0=/cache"} <= set(machine.boot_args.split())
        assert machine.console is not None and "EXT4-fs (vdc): mounted filesystem r/w on /cache" in (
            machine.console.tail()
        )
        first = current(rig.vmm)
        write(clone, "/hello", "from job one\n")
        assert await job(machine, "true") == 0
        assert await machine.finish(True) == ["deps"]
    finally:
        await machine.stop()
    committed = current(rig.vmm)
    assert committed != first and cat(committed, "/hello") == "from job one\n"
    assert not first.exists()  # nobody uses the old generation any more
    assert os.stat(committed).st_uid == os.geteuid()
    second = await rig.vmm.boot(SHAPE, "s2", sticky=PLAN)
    try:
        assert cat(second.jail.host("sticky-0.ext4"), "/hello") == "from job one\n"
        assert await job(second, "true") == 0
    finally:
        await second.stop()  # not finished: its clone is discarded, the committed state stays
    assert current(rig.vmm) == committed and rig.leftovers() == []


async def test_a_failed_jobs_writes_are_discarded(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "f1", sticky=PLAN)
    before = current(rig.vmm)
    try:
        write(machine.jail.host("sticky-0.ext4"), "/junk", "half-done\n")
        assert await job(machine, "exit 3") == 3
        assert await machine.finish(False) == []
    finally:
        await machine.stop()
    assert current(rig.vmm) == before and cat(before, "/junk") is None


async def test_a_guest_that_did_not_shut_down_cleanly_commits_nothing(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "k1", sticky=PLAN)
    before = current(rig.vmm)
    try:
        write(machine.jail.host("sticky-0.ext4"), "/torn", "maybe torn\n")
        assert machine.process is not None
        os.killpg(machine.process.pid, signal.SIGKILL)  # the VM died: its disk may be torn
        assert await machine.finish(True) == []
    finally:
        await machine.stop()
    assert current(rig.vmm) == before and cat(before, "/torn") is None
    assert list((before.parent / "refs").iterdir()) == []


async def test_sticky_disks_need_a_rootfs_version() -> None:
    for rig in make_rig():
        with pytest.raises(VMError, match="need a rootfs version"):
            await rig.vmm.boot(SHAPE, "n1", sticky=PLAN)
        assert rig.leftovers() == []


async def test_the_leftover_cleanup_forgets_a_crashed_agents_checkouts(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "c1", sticky=PLAN)
    refs = current(rig.vmm).parent / "refs"
    assert [r.name for r in refs.iterdir()] == ["c1"]
    assert machine.process is not None
    os.killpg(machine.process.pid, signal.SIGKILL)
    await machine.process.wait()
    assert await rig.vmm.cleanup_leftovers() == ["smith-c1"]
    assert list(refs.iterdir()) == [] and rig.leftovers() == []
    await machine.stop()


async def test_a_jailed_vms_clone_is_the_jail_users_until_it_is_committed(rootfs_dir: Path) -> None:  # noqa: F811
    store.activate(rootfs_dir, "v1")
    for rig in make_rig(jailed=True, rootfs_dir=rootfs_dir, shutdown_timeout=10.0):
        machine = await rig.vmm.boot(SHAPE, "j1", sticky=PLAN)
        try:
            paths = [c["body"]["path_on_host"] for c in rig.calls("smith-j1") if c["path"].startswith("/drives/")]
            assert paths == ["/root.ext4", "/scratch.img", "/sticky-0.ext4"]
            clone = machine.jail.host("sticky-0.ext4")
            st = clone.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (rig.vmm.config.uid, 0o600)
            write(clone, "/jailed", "yes\n")
            assert await job(machine, "true") == 0
            assert await machine.finish(True) == ["deps"]
        finally:
            await machine.stop()
        committed = current(rig.vmm)
        assert cat(committed, "/jailed") == "yes\n"
        assert (committed.stat().st_uid, committed.stat().st_mode & 0o777) == (os.geteuid(), 0o600)
        assert rig.leftovers() == []
