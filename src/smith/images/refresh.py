"""The guest image for this host as it is now, built at agent start when its inputs changed.

The kernel is Smith's own when `smith image kernel` built one under the data dir, else Debian's newest in /boot.
The image is keyed by the host's kernel, modules, busybox and python. After an unattended kernel or python
update the key changes; the agent then builds the new image (about a second) instead of finding none and
exiting, which under systemd's ``Restart=`` would loop for ever. A host that cannot build one at all (RHEL 9:
no static busybox, no Debian kernel layout) gets one error naming what to do.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from smith.errors import ConfigError, VMError
from smith.images.build import GuestImage, build_image, find_inputs
from smith.images.kernel import current_kernel
from smith.logging import get_logger

log = get_logger("smith.images")

NO_IMAGE_HINT = (
    "set SMITH_AGENT_KERNEL (and SMITH_AGENT_ROOTFS) to an image built on a Debian/Ubuntu machine "
    "(`smith image build` there), or install linux-image, busybox-static and python3 here (docs/hosts.md)"
)


def current_image(data_dir: Path) -> GuestImage:
    """The image for this host's current inputs, built now if it is missing; VMError if it cannot be built."""
    try:
        inputs = find_inputs(kernel=default_kernel(data_dir))
        image = build_image(data_dir, inputs)
    except (ConfigError, OSError) as exc:
        why = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise VMError(f"QEMU backend: no guest image for this host ({why}); {NO_IMAGE_HINT}") from exc
    if image.built:
        log.info("guest image built for this host", key=image.key, kernel=image.kernel_version)
    removed = prune_images(data_dir / "images", image.key)
    if removed:
        log.info("old guest images removed", removed=removed)
    return image


def default_kernel(data_dir: Path) -> Path | None:
    """The kernel `smith image kernel` built under ``data_dir`` (everything built in: boots faster), else None
    (the newest Debian kernel in /boot)."""
    kernel = current_kernel(data_dir)
    return kernel.vmlinux if kernel is not None else None


def prune_images(images: Path, current: str, keep: int = 1) -> list[str]:
    """Remove the guest images of earlier kernels and pythons, but the ``keep`` newest besides ``current``
    (a template or a running VM may still use the one just replaced). Only this builder's images: a directory
    named by a 16-hex key whose manifest names a kernel version."""
    found = []
    for d in images.glob("*"):
        if d.name == current or not re.fullmatch(r"[0-9a-f]{16}", d.name):
            continue
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            if "kernel_version" in manifest:
                found.append((d.stat().st_mtime, d))
        except (OSError, ValueError):
            continue
    removed = []
    for _, d in sorted(found, reverse=True)[keep:]:
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed
