"""A job's size-limited work area: a sparse file of ``disk_mib`` with an ext4 filesystem, loop-mounted.

Writing past its size fails with ENOSPC, whatever the host's free space; it costs only what is written. Needs
root (mount, loop devices); ``mount -o loop`` sets autoclear, so unmounting frees the loop device too.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from smith.adapters.childenv import minimal_env
from smith.errors import VMError

IMAGE = "disk.img"


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, env=minimal_env(), check=False, timeout=60)
    if done.returncode:
        raise VMError(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")


def mount(root: Path, mountpoint: Path, size_mib: int, uid: int) -> None:
    """``mountpoint`` becomes an empty filesystem of ``size_mib`` owned by ``uid``; the image lives in ``root``."""
    image = root / IMAGE
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    image.chmod(0o600)
    _run(
        "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", f"root_owner={uid}:{uid},nodiscard", str(image)
    )
    _run("mount", "-o", "loop,nosuid,nodev", str(image), str(mountpoint))
    with contextlib.suppress(OSError):
        (mountpoint / "lost+found").rmdir()


def unmount(mountpoint: Path) -> None:
    """Detach the filesystem at ``mountpoint`` if one is there (lazily: a dying process may still hold it)."""
    if mountpoint.is_mount():
        _run("umount", "-l", str(mountpoint))


def mounts_under(base: Path) -> list[Path]:
    """Mount points below ``base`` (a crashed agent's work disks), deepest first."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = Path(line.split()[1].replace("\\040", " "))
            if base in point.parents:
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
