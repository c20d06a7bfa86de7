"""A Firecracker VM's drives: its own copy of the rootfs version's image, and the job's scratch disk.

Firecracker takes raw files only (no qcow2), opened inside the jail's chroot, so every drive is a file in the
VM's chroot, owned by the jail user, and goes with the chroot (the VM's stop, or the leftover cleanup after a
crash):

- ``root.ext4``: a :func:`vmdisks.raw_clone` of the version's ``rootfs.ext4`` (a reflink where the filesystem
  has them, else a sparse copy), read-write: the guest writes to its own copy, never to the shared image.
  It is not Firecracker's root device (``is_root_device`` false): the initramfs (``initrd_path``) loads the
  virtio and ext4 modules, mounts it and switches to it, as under QEMU.
- ``scratch.img``: the job's ``disk_mib``, an empty ext4 cloned from the per-size template QEMU uses too
  (:func:`vmdisks.scratch_template`), mounted at ``/work``.

Firecracker gives a drive no serial of ours (the guest reads ``<st_dev><st_rdev><st_ino>`` of the host file),
but attaches drives in the order they were PUT (a root device first; there is none here), and the guest names
them ``/dev/vda``, ``/dev/vdb``, ... in that order. So the kernel command line says which is which:
``smith.vda=smith-root smith.vdb=smith-scratch``; the guest's init takes those names where QEMU's serials are.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from smith.adapters import vmdisks
from smith.adapters.firecracker.jailer import Jail

ROOT_FILE, SCRATCH_FILE = "root.ext4", "scratch.img"


@dataclass(frozen=True)
class FcDrive:
    drive_id: str  # Firecracker's id: letters, digits and underscores only
    file: str  # in the chroot
    serial: str  # the name the guest's init looks for (vmdisks.ROOT_SERIAL, SCRATCH_SERIAL, smith-sticky-N)
    read_only: bool = False
    mount: str | None = None  # sticky disks: where the guest mounts it


def make_drives(jail: Jail, root_image: Path | None, scratch_mib: int, cache_dir: Path) -> list[FcDrive]:
    """The VM's drives, made in its chroot, in the order they are to be PUT (the guest's vda, vdb, ...)."""
    drives = []
    if root_image is not None:
        vmdisks.raw_clone(root_image, jail.host(ROOT_FILE))
        jail.own(ROOT_FILE)
        drives.append(FcDrive("rootfs", ROOT_FILE, vmdisks.ROOT_SERIAL))
    if scratch_mib:
        vmdisks.raw_clone(vmdisks.scratch_template(cache_dir, scratch_mib), jail.host(SCRATCH_FILE))
        jail.own(SCRATCH_FILE)
        drives.append(FcDrive("scratch", SCRATCH_FILE, vmdisks.SCRATCH_SERIAL))
    return drives


def device(index: int) -> str:
    """The guest's name for the ``index``-th drive attached (vda, vdb, ..., vdz, vdaa: the kernel's scheme)."""
    letters = string.ascii_lowercase
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = letters[rest] + name
    return "vd" + name


def boot_args(drives: list[FcDrive], first: int = 0) -> str:
    """What the guest's init needs on the command line to find these drives (leading space; "" for none).
    ``first``: drives attached before these (an ext4 ``rootfs`` given as Firecracker's root device is vda)."""
    args = ""
    if any(d.serial == vmdisks.ROOT_SERIAL for d in drives):  # the initramfs switches to this disk
        args += f" smith.root={vmdisks.ROOT_SERIAL}"
    for i, drive in enumerate(drives, start=first):
        args += f" smith.{device(i)}={drive.serial}"
        if drive.mount:
            args += f" smith.mount.{drive.serial}={drive.mount}"
    return args
