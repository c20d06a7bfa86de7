"""The jailer's command line and chroot layout, the tap network, and the real-Firecracker drill (skips here)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.firecracker.jailer import Jail, JailSpec, cgroup2_root
from smith.adapters.firecracker.network import TapNetwork
from smith.errors import ConfigError, InvalidInput, VMError
from tests.agent.firecracker_support import run

IS_ROOT = os.geteuid() == 0


def spec(tmp_path: Path, **kw: object) -> JailSpec:
    base: dict[str, object] = {
        "id": "smith-vm1",
        "exec_file": Path("/usr/local/bin/firecracker"),
        "jailer_bin": "/usr/local/bin/jailer",
        "chroot_base": tmp_path / "jails",
        "uid": 12345,
        "gid": 23456,
    }
    return JailSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_command_line(tmp_path: Path) -> None:
    jail = Jail(
        spec(
            tmp_path,
            netns="/var/run/netns/smith",
            parent_cgroup="smith",
            cgroups={"cpu.max": "200000 100000", "memory.max": "600000000"},
            resource_limits={"no-file": 2048},
            firecracker_args=("--api-sock", "/run/firecracker.socket"),
        )
    )
    assert jail.command() == [
        "/usr/local/bin/jailer",
        "--id",
        "smith-vm1",
        "--exec-file",
        "/usr/local/bin/firecracker",
        "--uid",
        "12345",
        "--gid",
        "23456",
        "--chroot-base-dir",
        str(tmp_path / "jails"),
        "--cgroup-version",
        "2",
        "--parent-cgroup",
        "smith",
        "--cgroup",
        "cpu.max=200000 100000",
        "--cgroup",
        "memory.max=600000000",
        "--resource-limit",
        "no-file=2048",
        "--netns",
        "/var/run/netns/smith",
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]
    assert "--daemonize" not in jail.command()  # stdout is the serial console we read
    assert jail.root == tmp_path / "jails" / "firecracker" / "smith-vm1" / "root"
    assert jail.host("/run/firecracker.socket") == jail.root / "run" / "firecracker.socket"
    assert jail.cgroup_dir() == cgroup2_root() / "smith" / "smith-vm1"  # where the jailer makes it


def test_the_cgroup_root_is_the_first_cgroup2_mount_as_the_jailer_finds_it(tmp_path: Path) -> None:
    # A hybrid host (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified): the jailer takes the first
    # cgroup2 mount, so cleanup must look there, not under a hard-coded /sys/fs/cgroup.
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup2 /mnt/other cgroup2 rw 0 0\n"
    )
    assert cgroup2_root(mounts) == Path("/sys/fs/cgroup/unified")
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroup2_root(mounts) == Path("/sys/fs/cgroup")


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"id": "bad id"}, InvalidInput, "letters, digits and hyphens"),
        ({"id": "a" * 65}, InvalidInput, "1-64"),
        ({"exec_file": Path("/usr/bin/fc")}, ConfigError, "'firecracker' in its file name"),
        ({"cgroup_version": 3}, ConfigError, "cgroup version"),
        ({"cgroups": {"cpu max": "1"}}, ConfigError, "cgroup file name"),
    ],
)
def test_bad_specs_are_refused(tmp_path: Path, kw: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        spec(tmp_path, **kw)


def test_chroot_layout_links_shared_images_and_owns_per_vm_files(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    kernel.chmod(0o644)
    jail = Jail(spec(tmp_path, uid=os.geteuid(), gid=os.getegid()))
    jail.create()
    assert jail.link(kernel, "vmlinux") == "/vmlinux"
    assert (jail.root / "vmlinux").stat().st_ino == kernel.stat().st_ino  # hard link: no copy of the image
    assert jail.new_file("scratch.img", size=1 << 20) == "/scratch.img"
    scratch = (jail.root / "scratch.img").stat()
    assert scratch.st_size == 1 << 20 and scratch.st_blocks == 0  # sparse
    with pytest.raises(VMError, match="already exists"):
        jail.create()
    jail.remove()
    assert not jail.dir.exists() and kernel.exists()
    jail.remove()  # idempotent


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="chown to the jail user needs root")
def test_as_root_per_vm_files_belong_to_the_jail_user_and_images_stay_ours(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * 512)
    rootfs.chmod(0o644)
    jail = Jail(spec(tmp_path))
    jail.create()
    jail.link(rootfs, "rootfs.ext4")
    jail.new_file("firecracker.log")
    assert (jail.root.stat().st_uid, jail.root.stat().st_gid) == (12345, 23456)
    assert (jail.root / "firecracker.log").stat().st_uid == 12345
    assert rootfs.stat().st_uid == 0  # the shared image was not given away through its hard link
    private = tmp_path / "private.ext4"
    private.write_bytes(b"")
    private.chmod(0o600)
    with pytest.raises(ConfigError, match="world-readable"):
        jail.link(private, "private.ext4")
    assert not (jail.root / "private.ext4").exists()
    jail.remove()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """An image on another filesystem than the jails (/dev/shm): linking it in copies it."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to copy across")
    source = shm / f"smith-test-{uuid.uuid4().hex}"
    source.write_bytes(b"kernel bytes")
    source.chmod(0o644)
    yield source
    source.unlink()


def test_link_copies_across_filesystems(tmp_path: Path, elsewhere: Path) -> None:
    jail = Jail(spec(tmp_path, uid=os.geteuid(), gid=os.getegid()))
    jail.create()
    jail.link(elsewhere, "vmlinux")
    assert (jail.root / "vmlinux").read_bytes() == b"kernel bytes"
    jail.remove()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="chown to the jail user needs root")
def test_a_copied_image_stays_ours_and_read_only(tmp_path: Path, elsewhere: Path) -> None:
    """Across filesystems the image is copied: the copy must not become the jail user's to rewrite."""
    jail = Jail(spec(tmp_path))
    jail.create()
    jail.link(elsewhere, "rootfs.ext4")
    copy = (jail.root / "rootfs.ext4").stat()
    assert copy.st_uid == 0 and copy.st_mode & 0o222 == 0
    jail.remove()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="a jail user other than ourselves needs root")
@pytest.mark.parametrize(("owner", "mode"), [(12345, 0o644), (0, 0o646), (23456, 0o664)])
def test_an_image_the_jail_user_could_write_is_not_shared(tmp_path: Path, owner: int, mode: int) -> None:
    image = tmp_path / "rootfs.ext4"
    image.write_bytes(b"")
    os.chown(image, owner, owner)
    image.chmod(mode)
    jail = Jail(spec(tmp_path))  # uid 12345, gid 23456
    jail.create()
    with pytest.raises(ConfigError, match="must not be writable by the jail user"):
        jail.link(image, "rootfs.ext4")
    assert not (jail.root / "rootfs.ext4").exists()
    jail.remove()


def test_tap_slots_are_distinct_30s() -> None:
    net = TapNetwork("10.200.0.0/24", netns="smith-test")
    a, b = net.slot(0), net.slot(1)
    assert (a.tap, a.gateway_ip, a.guest_ip, a.netmask) == ("fc0", "10.200.0.1", "10.200.0.2", "255.255.255.252")
    assert (b.gateway_ip, b.guest_ip) == ("10.200.0.5", "10.200.0.6")
    assert a.mac != b.mac and a.mac.startswith("06:00:")
    assert a.netns == "/var/run/netns/smith-test"
    assert net.size == 64


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT or shutil.which("ip") is None, reason="needs root and iproute2 (ip)")
async def test_tap_network_creates_and_removes_taps_in_its_own_namespace() -> None:
    ns = f"smith-t{uuid.uuid4().hex[:8]}"
    if run("ip", "netns", "add", ns).returncode:
        pytest.skip("cannot create a network namespace here")
    try:
        net = TapNetwork("10.201.0.0/29", netns=ns)  # room for two slots
        first = await net.acquire("a")
        second = await net.acquire("b")
        with pytest.raises(VMError, match="in use") as info:
            await net.acquire("c")
        assert info.value.retryable
        shown = run("ip", "-n", ns, "-o", "addr", "show", "dev", first.tap)
        assert "10.201.0.1/30" in shown.stdout
        await net.release(first)
        await net.release(first)  # idempotent
        gone = run("ip", "-n", ns, "link", "show", first.tap)
        assert gone.returncode != 0
        assert (await net.acquire("d")).tap == first.tap  # the slot is reused
        await net.release(second)
    finally:
        run("ip", "netns", "del", ns)
