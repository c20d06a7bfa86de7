"""VM disks without booting: per-VM qcow2 layers over a shared image, scratch templates, raw clones, cleanup."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from smith.adapters import vmdisks
from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.errors import VMError

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("qemu-img", "mkfs.ext4", "debugfs", "qemu-system-x86_64")),
    reason="needs qemu-img (qemu-utils), e2fsprogs and qemu-system-x86",
)


def info(path: Path) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True)
    return dict(json.loads(done.stdout))


def big_base(path: Path, gib: int = 2) -> Path:
    with path.open("wb") as f:
        f.truncate(gib << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path)], check=True)
    path.chmod(0o444)
    return path


def test_a_vm_gets_layers_over_the_shared_image_whatever_its_size(tmp_path: Path) -> None:
    base = big_base(tmp_path / "rootfs.ext4")
    before = base.read_bytes()[: 1 << 20]
    vm = tmp_path / "vm"
    vm.mkdir()
    disks = vmdisks.qemu_disks(vm, base, 512, tmp_path / "cache")
    assert [d.serial for d in disks] == ["smith-root", "smith-scratch"]
    root = info(vm / "root.qcow2")
    assert root["backing-filename"] == str(base) and root["virtual-size"] == 2 << 30
    assert (vm / "root.qcow2").stat().st_size < 1 << 20  # a header: the image's size does not matter
    scratch = info(vm / "scratch.qcow2")
    assert scratch["virtual-size"] == 512 << 20 and (vm / "scratch.qcow2").stat().st_size < 1 << 20
    assert base.read_bytes()[: 1 << 20] == before
    args = disks[0].qemu_args()
    assert args[-1] == "virtio-blk-device,drive=smith-root,serial=smith-root"


def test_the_scratch_template_is_made_once_per_size_and_writable_by_all(tmp_path: Path) -> None:
    first = vmdisks.scratch_template(tmp_path, 256)
    inode = first.stat().st_ino
    assert vmdisks.scratch_template(tmp_path, 256).stat().st_ino == inode
    assert first.stat().st_blocks * 512 < (256 << 20) // 8  # sparse
    stat = subprocess.run(["debugfs", "-R", "stat /", str(first)], capture_output=True, text=True, check=True)
    assert "Mode:  01777" in stat.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["scratch-256.ext4"]  # no temporary left


def test_a_raw_clone_keeps_holes(tmp_path: Path) -> None:
    base = big_base(tmp_path / "rootfs.ext4", 1)
    how = vmdisks.raw_clone(base, tmp_path / "clone.ext4")
    clone = tmp_path / "clone.ext4"
    assert how in ("reflink", "sparse")
    assert clone.stat().st_size == base.stat().st_size
    assert clone.stat().st_blocks <= base.stat().st_blocks + 64
    assert oct(clone.stat().st_mode & 0o777) == "0o600"


async def test_the_leftover_cleanup_removes_a_crashed_vms_disks(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    vmm = QemuVMM(tmp_path / "q", QemuConfig(kernel=kernel, accel="tcg"))
    vm = tmp_path / "q" / "qemu-job-1"
    vm.mkdir()
    vmdisks.qemu_disks(vm, big_base(tmp_path / "r.ext4", 1), 64, tmp_path / "q" / "disks")
    (vm / "pid").write_text("999999")
    (tmp_path / "q" / "disks" / ".scratch-64.ab12").write_bytes(b"half")
    assert await vmm.cleanup_leftovers() == ["qemu-job-1", ".scratch-64.ab12"]
    assert not vm.exists() and [p.name for p in (tmp_path / "q" / "disks").iterdir()] == ["scratch-64.ext4"]


def test_a_rootfs_version_needs_the_initramfs(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    with pytest.raises(VMError, match="initramfs"):
        QemuVMM(tmp_path / "q", QemuConfig(kernel=kernel, rootfs_dir=tmp_path / "rootfs"))
