"""Rootfs versions for benchmarks: one base tarball built as a "small" image (its own size) and a "big" 2 GiB one,
so a figure can show whether a VM's start cost follows the image's size."""

from __future__ import annotations

from pathlib import Path


def small_and_big(tarball: Path, output_dir: Path) -> Path:
    """Build versions ``small`` and ``big`` (2 GiB) of ``tarball`` under ``output_dir``; returns the output dir."""
    from smith.rootfs.build import build_version
    from smith.rootfs.config import RootfsConfig
    from smith.rootfs.fetch import sha256_file

    sha = sha256_file(tarball)
    config = RootfsConfig.model_validate(
        {
            "rootfs": {"output_dir": str(output_dir)},
            "versions": [
                {"name": "small", "base_path": str(tarball), "sha256": sha},
                {"name": "big", "base_path": str(tarball), "sha256": sha, "size": "2G"},
            ],
        }
    )
    for version in config.versions:
        build_version(config, version)
    return config.output_dir
