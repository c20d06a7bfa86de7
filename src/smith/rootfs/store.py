"""Built versions on disk and the active one.

::

    <output_dir>/versions/<name>/rootfs.ext4   the root disk (shared by every VM, opened read-only)
                                /kernel        the version's own kernel, if the config names one
                                /manifest.json written last: a folder without it is unfinished
    <output_dir>/active -> versions/<name>     switched with one rename(2): atomic
    <output_dir>/downloads/<sha256>            verified bases, kept for rebuilds

A version is immutable once built: VMs booted from it keep reading its ``rootfs.ext4`` whatever is activated
later, so nothing here deletes or rewrites a built version.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smith.errors import ConfigError, NotFound

ROOTFS = "rootfs.ext4"
KERNEL = "kernel"
MANIFEST = "manifest.json"
ACTIVE = "active"


@dataclass(frozen=True)
class Built:
    name: str
    dir: Path  # resolved: stays the same folder even if another version is activated meanwhile
    manifest: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.dir / ROOTFS

    @property
    def kernel(self) -> Path | None:
        path = self.dir / KERNEL
        return path if path.is_file() else None


def version_dir(output_dir: Path, name: str) -> Path:
    return output_dir / "versions" / name


def built(output_dir: Path, name: str) -> Built | None:
    vdir = version_dir(output_dir, name)
    try:
        manifest = json.loads((vdir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return Built(name, vdir.resolve(), manifest)


def activate(output_dir: Path, name: str) -> Built:
    """Make ``name`` the version new VMs boot: a new symlink renamed over ``active`` (never a moment without)."""
    version = built(output_dir, name)
    if version is None:
        raise NotFound(f"version {name!r} is not built in {output_dir} (run `smith rootfs build` first)")
    tmp = output_dir / f".{ACTIVE}.{secrets.token_hex(4)}"
    os.symlink(f"versions/{name}", tmp)
    try:
        os.replace(tmp, output_dir / ACTIVE)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return version


def active(output_dir: Path) -> Built | None:
    """The active version, resolved once (a caller keeps using this folder even if the link moves)."""
    try:
        target = os.readlink(output_dir / ACTIVE)
    except OSError:
        return None
    name = Path(target).name
    version = built(output_dir, name)
    if version is None:
        raise ConfigError(f"{output_dir / ACTIVE} points at {target}, which is not a built version")
    return version


def names(output_dir: Path) -> list[str]:
    root = output_dir / "versions"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
