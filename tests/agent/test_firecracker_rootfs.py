"""Firecracker boots the active rootfs version: the initramfs as initrd, its own raw copy of the version's ext4
image as a read-write drive (the initramfs switches to it), a formatted scratch drive, all in the VM's jail.

The rootfs is built here with `smith rootfs build` from a tiny base (no network); the fake Firecracker plays the
initramfs (it finds the root disk by the command line's ``smith.vdX=`` names and refuses one that is no smith
rootfs). Needs e2fsprogs (mkfs.ext4, debugfs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smith.adapters.firecracker.disks import device
from smith.cli import app
from smith.errors import VMError
from smith.rootfs import ext4, store
from tests.agent.firecracker_support import SHAPE, Rig, guest_config, make_rig
from tests.rootfs.support import sha256, tar_base, write_config

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("mkfs.ext4", "debugfs")), reason="needs e2fsprogs (mkfs.ext4, debugfs)"
)


@pytest.fixture(scope="module")
def rootfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs output_dir with versions v1 and v2 built, v1 active."""
    top = tmp_path_factory.mktemp("fcrootfs")
    base = tar_base(top / "base.tar.gz", {"etc/os-release": b"NAME=tiny\n"})
    versions = [{"name": name, "base_path": str(base), "sha256": sha256(base), "size": "64M"} for name in ("v1", "v2")]
    cfg = write_config(top / "rootfs.yaml", top / "out", versions, default="v1")
    result = CliRunner().invoke(app, ["rootfs", "build", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return top / "out"


@pytest.fixture
def rig(rootfs_dir: Path) -> Iterator[Rig]:
    store.activate(rootfs_dir, "v1")
    yield from make_rig(rootfs_dir=rootfs_dir)


def calls(rig: Rig, name: str, method: str, prefix: str) -> list[dict[str, object]]:
    return [c["body"] for c in rig.calls(name) if c["method"] == method and c["path"].startswith(prefix)]


async def test_a_vm_boots_the_active_version_from_its_own_copy_and_mounts_its_scratch(
    rig: Rig, rootfs_dir: Path
) -> None:
    version = store.active(rootfs_dir)
    assert version is not None
    shared = version.rootfs.read_bytes()
    machine = await rig.vmm.boot(SHAPE, "r1")
    try:
        assert machine.image == "v1"
        drives = calls(rig, "smith-r1", "PUT", "/drives/")
        assert [d["drive_id"] for d in drives] == ["rootfs", "scratch"]
        assert not any(d["is_root_device"] or d["is_read_only"] for d in drives)  # the initramfs mounts it, r/w
        root, scratch = (Path(str(d["path_on_host"])) for d in drives)
        assert root.parent == scratch.parent == machine.jail.host(".")  # in the jail: gone with it
        assert root.stat().st_ino != version.rootfs.stat().st_ino and root.read_bytes() == shared
        assert ext4.is_ext4(scratch) and scratch.stat().st_size == SHAPE.disk_mib << 20
        boot = calls(rig, "smith-r1", "PUT", "/boot-source")[0]
        assert boot["initrd_path"]  # the initramfs switches to the root disk
        args = str(boot["boot_args"]).split()
        assert {"smith.root=smith-root", "smith.vda=smith-root", "smith.vdb=smith-scratch"} <= set(args)
        assert machine.console is not None
        assert "EXT4-fs (vda): mounted filesystem r/w; switching root" in machine.console.tail()
        assert "EXT4-fs (vdb): mounted filesystem r/w on /work" in machine.console.tail()
        await machine.assign(guest_config("echo from-the-rootfs"))
        lines = [e.line for e in [x async for x in machine.events()] if e.stream == "stdout"]
        assert lines == ["from-the-rootfs"]
    finally:
        await machine.stop()
    assert rig.leftovers() == []
    assert version.rootfs.read_bytes() == shared  # the shared image was never written


async def test_activate_while_a_vm_runs_keeps_its_version_and_new_vms_get_the_new_one(
    rig: Rig, rootfs_dir: Path
) -> None:
    first = await rig.vmm.boot(SHAPE, "a1")
    try:
        store.activate(rootfs_dir, "v2")
        second = await rig.vmm.boot(SHAPE, "a2")
        try:
            assert (first.image, second.image) == ("v1", "v2")
            assert first.alive() and second.alive()
        finally:
            await second.stop()
    finally:
        await first.stop()


async def test_a_jailed_vm_names_its_drives_inside_the_chroot_and_owns_them(rootfs_dir: Path) -> None:
    store.activate(rootfs_dir, "v1")
    for rig in make_rig(jailed=True, rootfs_dir=rootfs_dir):
        machine = await rig.vmm.boot(SHAPE, "jr")
        try:
            paths = [d["path_on_host"] for d in calls(rig, "smith-jr", "PUT", "/drives/")]
            assert paths == ["/root.ext4", "/scratch.img"]
            for name in ("root.ext4", "scratch.img"):
                st = machine.jail.host(name).stat()
                assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o600)
            await machine.assign(guest_config("echo jailed-rootfs"))
            lines = [e.line for e in [x async for x in machine.events()] if e.stream == "stdout"]
            assert lines == ["jailed-rootfs"]
        finally:
            await machine.stop()
        assert rig.leftovers() == []


async def test_the_disks_of_a_crashed_agents_vm_are_removed_by_the_leftover_cleanup(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "crash")
    root = machine.jail.host("root.ext4")
    assert root.exists()
    assert machine.process is not None
    os.killpg(machine.process.pid, signal.SIGKILL)  # the agent "crashed": nobody unwinds this VM
    await machine.process.wait()
    assert await rig.vmm.cleanup_leftovers() == ["smith-crash"]
    assert not root.exists() and rig.leftovers() == []
    assert rig.network.in_use == {}
    await machine.stop()


async def test_a_version_that_is_no_smith_rootfs_fails_the_boot_at_once(rig: Rig, rootfs_dir: Path) -> None:
    """The initramfs finds no /smith/init on the root disk: it says so and reboots (Firecracker exits)."""
    bogus = store.version_dir(rootfs_dir, "bogus")
    bogus.mkdir(parents=True)
    ext4.make_empty(bogus / "rootfs.ext4", 16 << 20, label="bogus")
    (bogus / "manifest.json").write_text(json.dumps({"name": "bogus"}))
    store.activate(rootfs_dir, "bogus")
    try:
        with pytest.raises(VMError, match="root disk smith-root not found or not a smith rootfs"):
            await rig.vmm.boot(SHAPE, "bad")
        assert rig.leftovers() == []
    finally:
        store.activate(rootfs_dir, "v1")
        shutil.rmtree(bogus)


def test_device_names_follow_the_kernels_scheme() -> None:
    assert [device(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


async def test_a_snapshot_of_a_rootfs_vm_carries_its_drives_to_the_clone(rig: Rig) -> None:
    """The template's guest has its drives mounted: a clone must start from the very same bytes."""
    source = await rig.vmm.boot(SHAPE, "tpl")
    try:
        snap = await rig.vmm.snapshot(source, rig.base / "snap")
        assert [p.name for p in snap.disks] == ["root.ext4", "scratch.img"] and snap.image == "v1"
        saved = {p.name: p.read_bytes() for p in snap.disks}
    finally:
        await source.stop()
    clone = await rig.vmm.boot_from_snapshot(SHAPE, "cl", snap)
    try:
        assert clone.image == "v1"
        for name, data in saved.items():
            copy = clone.jail.host(name)
            assert copy.read_bytes() == data and copy.stat().st_ino != (rig.base / "snap" / name).stat().st_ino
    finally:
        await clone.stop()
    assert rig.leftovers() == []
