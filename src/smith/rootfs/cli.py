"""``python -m smith.rootfs.cli build --config rootfs.yaml``: the same commands as ``smith rootfs``."""

from __future__ import annotations

from smith.cli.root import run
from smith.cli.rootfs import app

if __name__ == "__main__":
    run(app, prog="python -m smith.rootfs.cli")
