"""``python -m smith.rootfs.cli build --config rootfs.yaml``: the same commands as ``smith rootfs``."""

from __future__ import annotations

from smith.cli import main
from smith.cli.rootfs import app

if __name__ == "__main__":
    main(app)
