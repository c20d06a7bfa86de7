"""Is an image's GitHub runner older than the minimum GitHub accepts?

GitHub's runner refuses to start when GitHub considers it too old, and a JIT runner updates itself for every
job when a newer one exists (it cannot be told not to), so an image's runner falling behind costs each job a
download, then a failure. GitHub publishes no "minimum version" to ask for, so the minimum is the operator's:
``SMITH_RUNNER_MIN_VERSION``, e.g. the newest ``actions/runner`` release they track (GitHub stops accepting a
release some time after the next one is out). ``smith rootfs list`` and the agent at start warn when the image's
runner (its manifest's ``runner_version``) is older.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from smith.errors import SmithError
from smith.rootfs import store


def parse(version: str) -> tuple[int, ...] | None:
    found = re.fullmatch(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(x) for x in found.group(1).split(".")) if found else None


def too_old(runner_version: str | None, minimum: str | None) -> bool:
    """True when both are versions and the runner's is older than the minimum."""
    have, need = parse(runner_version or ""), parse(minimum or "")
    return have is not None and need is not None and have < need


def warning(what: str, runner_version: str | None, minimum: str | None) -> str | None:
    if not too_old(runner_version, minimum):
        return None
    return (
        f"{what} carries GitHub's runner {runner_version}, older than SMITH_RUNNER_MIN_VERSION {minimum}: GitHub "
        "refuses runners it considers too old and JIT runners update themselves for every job; build an image "
        "with a newer runner (`smith rootfs base` with a newer actions/runner tarball)"
    )


def image_manifest(rootfs_dir: Path | None, rootfs: Path | None) -> tuple[str, dict[str, Any]] | None:
    """What an agent boots: the active version of ``rootfs_dir``, else ``rootfs``'s sidecar ``<image>.json``
    (written by ``smith rootfs base``); with a name for messages. None when neither says."""
    if rootfs_dir is not None:
        try:
            active = store.active(rootfs_dir)
        except SmithError:
            active = None
        if active is not None:
            return f"rootfs version {active.name}", active.manifest
    if rootfs is not None:
        sidecar = rootfs.with_name(rootfs.name + ".json")
        try:
            return f"image {rootfs}", dict(json.loads(sidecar.read_text()))
        except (OSError, ValueError):
            return None
    return None


def agent_warning(rootfs_dir: Path | None, rootfs: Path | None, minimum: str | None) -> str | None:
    """The agent's start-up warning, if the image it boots has a runner below the minimum."""
    if not minimum:
        return None
    found = image_manifest(rootfs_dir, rootfs)
    return warning(found[0], found[1].get("runner_version"), minimum) if found else None
