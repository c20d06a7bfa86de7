"""A VM's disks: the shared root image read-only under a per-VM copy-on-write layer, and a scratch disk.

- **root**: ``versions/<name>/rootfs.ext4`` of the active rootfs version (``smith rootfs``) is never written;
  each VM gets ``root.qcow2`` in its own folder, a qcow2 whose backing file is that image (``qemu-img create
  -b``: a few hundred bytes of header, whatever the image's size). The guest writes to the qcow2 only.
- **scratch**: the job's ``disk_mib`` work area, mounted at ``/work``. An empty ext4 of each size is made once
  (``<cache>/scratch-<mib>.ext4``, sparse, no journal, ~20 ms: it is thrown away with the VM) and each VM gets a
  qcow2 over it, so a VM never waits for mkfs.
- **Firecracker** takes raw files only: ``raw_clone`` makes a VM's own root from the shared image with a
  reflink where the filesystem has them (XFS, btrfs: constant time) and a sparse copy elsewhere (time grows with
  the image's *allocated* bytes). See docs/parts/vms.md for the measurements and the device-mapper option.

Every file lives in the VM's folder, so removing the folder (the VM's stop, or the leftover cleanup after a
crash) removes its disks. Disks are found in the guest by their serial (``smith-root``, ``smith-scratch``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from smith.adapters.childenv import minimal_env
from smith.errors import SmithError, VMError
from smith.rootfs import store as rootfs_store
from smith.rootfs.store import Built

ROOT_SERIAL = "smith-root"
SCRATCH_SERIAL = "smith-scratch"


@dataclass(frozen=True)
class Disk:
    serial: str
    path: Path
    format: str  # qcow2 or raw
    read_only: bool = False
    cache: str = "unsafe"  # thrown away with the VM: no flush to the host's disk needed
    mount: str | None = None  # where the guest mounts it (sticky disks: smith.mount.<serial>=<path>)

    def qemu_args(self) -> list[str]:
        ro = ",readonly=on" if self.read_only else ""
        return [
            "-drive",
            f"id={self.serial},file={self.path},format={self.format},if=none,cache={self.cache}{ro}",
            "-device",
            f"virtio-blk-device,drive={self.serial},serial={self.serial}",
        ]


def as_fdsets(disks: list[Disk], first_set: int = 1) -> tuple[list[Disk], list[int], list[str]]:
    """The disks opened here and handed to QEMU as fd sets (``-add-fd``, ``/dev/fdset/N``), read-write and
    read-only descriptors each: a restored QEMU reopens its images when it resumes, by then in its empty chroot
    where no path resolves. Returns the disks to give QEMU, the descriptors to pass (close them after the
    spawn) and the ``-add-fd`` arguments."""
    out, fds, args = [], [], []
    try:
        for i, disk in enumerate(disks, start=first_set):
            modes = (os.O_RDONLY,) if disk.read_only else (os.O_RDWR, os.O_RDONLY)
            for mode in modes:
                fd = os.open(disk.path, mode | os.O_CLOEXEC)
                fds.append(fd)
                args += ["-add-fd", f"fd={fd},set={i}"]
            out.append(dataclasses.replace(disk, path=Path(f"/dev/fdset/{i}")))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return out, fds, args


def active_version(rootfs_dir: Path | None, backend: str) -> Built | None:
    """The rootfs version active now, for a VM booting now (resolved once: it keeps it whatever is activated
    later); None without a rootfs directory."""
    if rootfs_dir is None:
        return None
    try:
        version = rootfs_store.active(rootfs_dir)
    except SmithError as exc:
        raise VMError(f"{backend} backend: {exc.message}") from exc
    if version is None:
        raise VMError(f"{backend} backend: no active rootfs in {rootfs_dir} (`smith rootfs activate`)")
    return version


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, env=minimal_env(), timeout=120, check=False)
    except FileNotFoundError as exc:
        raise VMError(f"{argv[0]} is missing (apt-get install qemu-utils e2fsprogs)") from exc
    if done.returncode:
        raise VMError(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()[-400:]}")


def qcow2_overlay(base: Path, dest: Path, base_format: str = "raw") -> Path:
    """``dest``: an empty qcow2 whose reads fall through to ``base`` (never written through it)."""
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base.resolve()), str(dest))
    dest.chmod(0o600)
    return dest


def scratch_template(cache_dir: Path, mib: int) -> Path:
    """An empty ext4 of ``mib`` MiB, made once per size (atomically: a half-made one is never used)."""
    path = cache_dir / f"scratch-{mib}.ext4"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".scratch-{mib}.{secrets.token_hex(4)}"
    try:
        with tmp.open("wb") as f:
            f.truncate(mib << 20)
        # Inode tables written now (not lazily by the guest's kernel into every VM's overlay); no journal.
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-L",
            "scratch",
            "-E",
            "lazy_itable_init=0,nodiscard,root_owner=0:0",
            str(tmp),
        )
        _run("debugfs", "-w", "-R", "sif / mode 041777", str(tmp))  # any user of the guest may write /work
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def qemu_disks(vm_dir: Path, root_image: Path | None, scratch_mib: int | None, cache_dir: Path) -> list[Disk]:
    """The VM's disks, created in ``vm_dir``: root over ``root_image`` and scratch of ``scratch_mib``."""
    disks = []
    if root_image is not None:
        disks.append(Disk(ROOT_SERIAL, qcow2_overlay(root_image, vm_dir / "root.qcow2"), "qcow2"))
    if scratch_mib:
        template = scratch_template(cache_dir, scratch_mib)
        disks.append(Disk(SCRATCH_SERIAL, qcow2_overlay(template, vm_dir / "scratch.qcow2"), "qcow2"))
    return disks


def raw_clone(base: Path, dest: Path) -> str:
    """A VM's own raw copy of ``base`` for Firecracker: a reflink if the filesystem can, else a sparse copy.

    Returns how it was made ("reflink" or "sparse")."""
    if _reflink(base, dest):
        return "reflink"
    _run("cp", "--sparse=always", str(base), str(dest))
    dest.chmod(0o600)
    return "sparse"


def _reflink(base: Path, dest: Path) -> bool:
    done = subprocess.run(
        ["cp", "--reflink=always", str(base), str(dest)], capture_output=True, env=minimal_env(), check=False
    )
    if done.returncode:
        with contextlib.suppress(OSError):
            dest.unlink()
        return False
    dest.chmod(0o600)
    return True
