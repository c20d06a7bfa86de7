"""Firecracker as it really runs (issue 16): each test fails against the fake made to behave like the real
binary in that respect, and passed once Smith handled it.

The fake's guest boots only what the Debian kernel can boot, reaches MMDS only with the addresses the image's
init reads, writes its console to a non-blocking stdout that drops what nobody reads, keeps running after a
guest poweroff; its jailer resolves a linked binary, joins --netns and refuses noexec/nodev chroot bases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from smith.adapters.firecracker.jailer import chroot_base_problem
from smith.adapters.firecracker.vmm import FirecrackerConfig, FirecrackerVMM
from smith.errors import ConfigError, VMError
from smith.testing.firecracker import first_cgroup2_mount, mount_problems
from tests.agent.firecracker_support import SHAPE, guest_config, make_rig

EXT4_ROOT = b"\0" * 1080 + b"\x53\xef" + b"\0" * 2014  # an ext4 superblock's magic: a disk the kernel can mount


async def test_a_root_drive_the_kernel_cannot_mount_fails_the_boot_with_the_panic() -> None:
    # InstanceStart answers 204 before the kernel runs; the guest then panics and Firecracker exits.
    for rig in make_rig(rootfs_bytes=b"\0" * 4096):
        with pytest.raises(VMError, match="died while booting") as info:
            await rig.vmm.boot(SHAPE, "panic")
        assert "Unable to mount root fs" in info.value.message
        assert rig.leftovers() == [] and rig.network.in_use == {}


async def test_an_ext4_root_drive_is_attached_as_the_root_device() -> None:
    for rig in make_rig(rootfs_bytes=EXT4_ROOT):
        machine = await rig.vmm.boot(SHAPE, "ext4")
        await machine.stop()
        boot = next(c["body"] for c in rig.calls("smith-ext4") if c["path"] == "/boot-source")
        drives = {c["body"]["drive_id"]: c["body"] for c in rig.calls("smith-ext4") if c["path"].startswith("/drives")}
        assert "initrd_path" not in boot
        assert drives["rootfs"]["is_root_device"] and drives["rootfs"]["is_read_only"]


async def test_assign_to_a_vm_that_died_names_the_death() -> None:
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "dead")
        try:
            assert machine.process is not None
            machine.process.kill()
            await machine.process.wait()
            with pytest.raises(VMError, match="is gone"):
                await machine.assign(guest_config())
        finally:
            await machine.stop()


async def test_firecracker_exits_by_itself_once_the_job_is_done() -> None:
    # The image's init ends with `reboot -f` (reboot=k): after a guest's poweroff Firecracker would keep running
    # on x86 and every stop would wait for its timeout and kill.
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "done")
        proc = machine.process
        assert proc is not None
        try:
            await machine.assign(guest_config("echo bye"))
            assert [e.type async for e in machine.events()][-1] == "exit"
            await asyncio.wait_for(proc.wait(), 20)  # a bound for a hung test, not a timing assertion
            assert proc.returncode == 0
        finally:
            await machine.stop()
        actions = [c["body"] for c in rig.calls("smith-done") if c["path"] == "/actions"]
        assert actions == [{"action_type": "InstanceStart"}]  # no Ctrl+Alt+Del was needed


async def test_ctrl_alt_del_stops_a_running_job() -> None:
    # The kernel turns Ctrl+Alt+Del into SIGINT for PID 1; the image's init traps it and reboots.
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "cad")
        proc = machine.process
        assert proc is not None
        await machine.assign(guest_config("echo up; sleep 300"))
        async for event in machine.events():
            if event.line == "up":
                break
        await machine.stop()
        assert proc.returncode == 0  # exited on the guest's reboot, not killed


async def test_no_console_output_is_lost_while_nobody_reads() -> None:
    # Firecracker's stdout is non-blocking: what does not fit in the pipe is dropped. Nobody iterates the events
    # until the guest is done; the job prints far more than a pipe holds.
    lines = 12_000
    script = f"i=0; while [ $i -lt {lines} ]; do echo line-$i-{'x' * 100}; i=$((i+1)); done"
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "flood")
        proc = machine.process
        assert proc is not None
        try:
            await machine.assign(guest_config(script))
            await asyncio.wait_for(proc.wait(), 60)  # the guest is done and Firecracker gone: nothing read yet
            seen = [e async for e in machine.events()]
        finally:
            await machine.stop()
        out = [e.line for e in seen if e.type == "line" and e.stream == "stdout"]
        assert len(out) == lines and out[-1].startswith(f"line-{lines - 1}-")
        assert seen[-1].type == "exit" and seen[-1].exit_code == 0


async def test_a_linked_firecracker_binary_is_jailed_under_its_targets_name() -> None:
    # Release tarballs ship firecracker-v1.16.1-x86_64; people link it as firecracker. The jailer canonicalises
    # --exec-file, so the chroot (and the API socket in it) is named after the target.
    for rig in make_rig(jailed=True):
        target = rig.vmm.config.firecracker_bin.rename(rig.base / "firecracker-v1.16.1-x86_64")
        link = rig.base / "firecracker"
        link.symlink_to(target.name)
        cfg = FirecrackerConfig(**{**rig.vmm.config.__dict__, "firecracker_bin": link})
        vmm = FirecrackerVMM(cfg, rig.network)
        machine = await vmm.boot(SHAPE, "linked")
        try:
            assert machine.jail.dir.parent.name == "firecracker-v1.16.1-x86_64"
            await machine.assign(guest_config("echo linked"))
            assert "linked" in [e.line async for e in machine.events()]
        finally:
            await machine.stop()
        assert not (rig.base / "jails" / "firecracker-v1.16.1-x86_64").exists()
        mount = first_cgroup2_mount()
        if mount is not None:  # as root the fake jailer made the parent cgroup, named after the target too
            with contextlib.suppress(OSError):
                (mount / "firecracker-v1.16.1-x86_64").rmdir()


def test_the_jailer_binary_name_check_follows_links(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    (tmp_path / "fc-v1").write_text("")
    (tmp_path / "firecracker").symlink_to("fc-v1")
    link = tmp_path / "firecracker"
    cfg = FirecrackerConfig(kernel=kernel, rootfs=kernel, chroot_base=tmp_path, firecracker_bin=link)
    with pytest.raises(ConfigError, match="the jailer goes by the file a link points to"):
        cfg.validate()


def _mount(options: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix="fc16mnt", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,{options}", "fc16", str(where)], check=False)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    return where


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a nodev/noexec tmpfs")
@pytest.mark.parametrize("options", ["nodev", "noexec"])
def test_a_chroot_base_on_a_nodev_or_noexec_mount_is_refused_at_start(options: str) -> None:
    where = _mount(options)
    try:
        problem = chroot_base_problem(where / "jails")
        assert options in problem and "mount" in problem
        assert mount_problems(where)  # the (fake) jailer fails there too
        assert chroot_base_problem(Path("/var/tmp")) == "" or "/var/tmp" in chroot_base_problem(Path("/var/tmp"))
        kernel = where.parent / "fc16-vmlinux"
        kernel.write_bytes(b"\x7fELF")
        try:
            cfg = FirecrackerConfig(kernel=kernel, rootfs=kernel, chroot_base=where / "jails", use_jailer=True)
            with pytest.raises(ConfigError, match=options):
                cfg.validate()
        finally:
            kernel.unlink()
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


@pytest.mark.skipif(
    os.geteuid() != 0 or first_cgroup2_mount() is None, reason="needs root and a cgroup2 mount (the jailer's cgroup)"
)
async def test_the_vms_cgroup_is_removed_from_where_the_jailer_made_it() -> None:
    # On a hybrid host cgroup2 is at /sys/fs/cgroup/unified: the jailer uses the first cgroup2 mount.
    mount = first_cgroup2_mount()
    assert mount is not None
    for rig in make_rig(jailed=True, parent_cgroup="smith-fc16-test"):
        machine = await rig.vmm.boot(SHAPE, "cg")
        made = mount / "smith-fc16-test" / "smith-cg"
        try:
            assert made.is_dir()
        finally:
            await machine.stop()
            assert not made.exists()
            (mount / "smith-fc16-test").rmdir()


async def test_a_clone_takes_its_own_address_and_mac_not_its_templates() -> None:
    # A snapshot holds the template's MAC and address; Firecracker's restore only swaps the tap. The config's
    # envelope names the clone's own identity (with the host's clock and a seed), which the guest agent takes.
    for rig in make_rig():
        source = await rig.vmm.boot(SHAPE, "tmpl")
        try:
            snap = await rig.vmm.snapshot(source, rig.base / "snapshots" / "tmpl")
            clone = await rig.vmm.boot_from_snapshot(SHAPE, "clone-1", snap)
            try:
                await clone.assign(guest_config("echo cloned"))
                events = [e async for e in clone.events()]
            finally:
                await clone.stop()
        finally:
            await source.stop()
        assert source.slot is not None and clone.slot is not None and source.slot.mac != clone.slot.mac
        identities = [e.line for e in events if e.stream == "system" and e.line.startswith("eth0: ")]
        assert identities[-1] == f"eth0: {clone.slot.mac} {clone.slot.guest_ip}/{clone.slot.prefix}"
        assert "cloned" in [e.line for e in events if e.stream == "stdout"]
