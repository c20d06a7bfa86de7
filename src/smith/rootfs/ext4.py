"""ext4 images without mounting them: ``mkfs.ext4 -d`` from a tree, ``debugfs`` to write files into one.

No loop device, no mount, no root needed for an image file (root is needed only to keep a tar's owners).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

from smith.adapters.childenv import minimal_env
from smith.errors import ConfigError

EXT4_MAGIC_OFFSET = 1080
_SAFE = re.compile(r"^[A-Za-z0-9._+@,:=/-]+$")
# debugfs reports these for `mkdir` of a directory that exists and `rm` of a file that does not: expected.
_EXPECTED = ("directory already exists", "File not found by ext2_lookup")


def run(*argv: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, env=minimal_env(), timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"{argv[0]} is missing (apt-get install e2fsprogs)") from exc
    if done.returncode:
        err = (done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")).strip()
        raise ConfigError(f"{' '.join(argv[:2])} failed: {err[-500:]}")
    return done.stdout.decode(errors="replace")


def is_ext4(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def make_from_tree(image: Path, tree: Path, size_bytes: int) -> None:
    """A new ext4 image of ``size_bytes`` (sparse) holding ``tree``, owners and modes as they are there."""
    with image.open("wb") as f:
        f.truncate(size_bytes)
    run("mkfs.ext4", "-q", "-F", "-d", str(tree), "-L", "smith-root", "-E", "nodiscard", str(image))


def make_empty(image: Path, size_bytes: int, *, label: str, owner: str = "0:0") -> None:
    """An empty ext4 filesystem in a sparse file (a scratch or sticky disk's first state)."""
    with image.open("wb") as f:
        f.truncate(size_bytes)
    run("mkfs.ext4", "-q", "-F", "-m", "0", "-L", label, "-E", f"root_owner={owner},nodiscard", str(image))


def grow(image: Path, size_bytes: int) -> None:
    """Grow the image file and its filesystem to ``size_bytes`` (never shrinks)."""
    if image.stat().st_size >= size_bytes:
        return
    with image.open("r+b") as f:
        f.truncate(size_bytes)
    run("e2fsck", "-fp", str(image))
    run("resize2fs", str(image))


def tree_size(tree: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames + dirnames:
            total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
    return total


def write_tree(image: Path, tree: Path) -> int:
    """Copy ``tree`` over the image's root with debugfs; the number of entries.

    Files and links replace the base's, owned by root with the overlay's mode; new folders are root's, 0755."""
    removals, script = [], []
    count = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = "/" + os.path.relpath(dirpath, tree).removeprefix(".").lstrip("/")
        for name in sorted(dirnames) + sorted(filenames):
            host = os.path.join(dirpath, name)
            guest = (rel_dir.rstrip("/") + "/" + name) if rel_dir != "/" else "/" + name
            if not _SAFE.match(guest):
                raise ConfigError(f"overlay path {guest!r}: only letters, digits and ._+@,:=/- are supported")
            st = os.lstat(host)
            if stat.S_ISDIR(st.st_mode):  # a folder the base has keeps its owner and mode (/tmp stays 1777)
                script.append(f"mkdir {guest}")
                count += 1
                continue
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(host)
                if not _SAFE.match(target):
                    raise ConfigError(f"overlay symlink {guest} -> {target!r}: unsupported characters")
                removals.append(f"rm {guest}")
                script.append(f"symlink {guest} {target}")
            elif stat.S_ISREG(st.st_mode):
                removals.append(f"rm {guest}")
                script.append(f"write {host} {guest}")
            else:
                raise ConfigError(f"overlay {host}: only files, folders and symlinks are supported")
            if not stat.S_ISLNK(st.st_mode):
                script.append(f"sif {guest} mode 0{st.st_mode:o}")
            script += [f"sif {guest} uid 0", f"sif {guest} gid 0"]
            count += 1
    # Removals in a session of their own: debugfs reusing a just-freed inode in the same session leaves it
    # unmarked in the inode bitmap (e2fsck: "Inode bitmap differences").
    for commands in (removals, script):
        if commands:
            debugfs(image, commands)
    return count


def debugfs(image: Path, commands: list[str]) -> None:
    """Run debugfs commands writing to ``image``; any error but the expected ones raises."""
    done = subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input="\n".join(commands).encode() + b"\n",
        capture_output=True,
        env=minimal_env(),
        timeout=600,
        check=False,
    )
    errors = [
        line
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ") and not any(e in line for e in _EXPECTED)
    ]
    if done.returncode or errors:
        raise ConfigError(f"debugfs on {image.name} failed: {'; '.join(errors)[-500:] or done.returncode}")


def read_file(image: Path, path: str) -> str | None:
    """A file's text inside the image, or None if it is not there."""
    done = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, env=minimal_env(), timeout=60, check=False
    )
    if done.returncode or b"File not found" in done.stderr:
        return None
    return done.stdout.decode(errors="replace")


def check(image: Path) -> None:
    """e2fsck, read-only: the image is consistent."""
    run("e2fsck", "-fn", str(image))


def sparse_copy(src: Path, dst: Path) -> None:
    """A copy that shares blocks where the filesystem can (reflink) and keeps holes."""
    cp = shutil.which("cp")
    if cp is None:
        shutil.copyfile(src, dst)
        return
    run(cp, "--reflink=auto", "--sparse=always", str(src), str(dst))
