"""Build a rootfs version: get the base (verified), make it an ext4 image, lay the overlay and Smith's guest
pieces over it with debugfs (no loop mount), write the manifest, and move the finished folder into place.

Smith's guest pieces, under ``/smith`` in every image: ``agent.py`` (the guest agent, run by the image's
python3), ``init`` (mounts the basics and the scratch disk, starts the agent; the initramfs switches to it),
``busybox`` (static: init's tools, whatever the base lacks).

A version is written to a hidden temporary folder and renamed into ``versions/<name>`` only when complete. A
version already built from the same inputs is left as it is; one built from other inputs is refused (versions
are immutable: VMs may be running from it; give the new one a new name).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smith.adapters.childenv import minimal_env
from smith.errors import ConfigError
from smith.rootfs import ext4, store
from smith.rootfs.config import RootfsConfig, Version
from smith.rootfs.fetch import OnBytes, fetch, sha256_file

BUILDER_VERSION = "1"
HERE = Path(__file__).resolve().parent
GUEST_AGENT = HERE.parent / "guest" / "agent.py"
INIT = HERE / "init.sh"
RUNNER_VERSION_FILE = "/opt/actions-runner/.smith-runner-version"
Say = Callable[[str], None]


def guest_pieces() -> dict[str, Path]:
    """Files Smith puts into every image, by their path under /smith."""
    from smith.images.build import static_busybox

    busybox = static_busybox()
    if busybox is None:
        raise ConfigError("a static busybox is needed for the image's init (apt-get install busybox-static)")
    return {"agent.py": GUEST_AGENT, "init": INIT, "busybox": busybox}


def tree_digest(root: Path | None) -> str | None:
    """A digest of a folder's paths, modes, link targets and contents."""
    if root is None:
        return None
    if not root.is_dir():
        raise ConfigError(f"overlay_dir {root} is not a folder")
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            h.update(str(path.readlink()).encode())
        elif path.is_file():
            h.update(bytes.fromhex(sha256_file(path)))
    return h.hexdigest()


def inputs_of(version: Version, pieces: dict[str, Path]) -> dict[str, Any]:
    return {
        "builder_version": BUILDER_VERSION,
        "base": version.base_url or str(version.base_path),
        "base_sha256": version.sha256,
        "overlay_dir": str(version.overlay_dir) if version.overlay_dir else None,
        "overlay_sha256": tree_digest(version.overlay_dir),
        "guest": {name: sha256_file(path) for name, path in pieces.items()},
        "kernel": str(version.kernel) if version.kernel else None,
        "kernel_sha256": sha256_file(version.kernel) if version.kernel else None,
        "size_bytes": version.size_bytes,
    }


def build_version(
    config: RootfsConfig, version: Version, *, say: Say | None = None, on_bytes: OnBytes | None = None
) -> tuple[store.Built, bool]:
    """The built version (and True if it was built now, False if it was there already)."""
    say = say or (lambda _m: None)
    out = config.output_dir
    pieces = guest_pieces()
    if version.kernel is not None and not version.kernel.is_file():
        raise ConfigError(f"version {version.name}: kernel {version.kernel} does not exist")
    inputs = inputs_of(version, pieces)
    existing = store.built(out, version.name)
    if existing is not None:
        if existing.manifest.get("inputs") == inputs:
            return existing, False
        raise ConfigError(
            f"version {version.name} is built already from other inputs; versions are immutable (VMs may run "
            "from it): give the new one a new name"
        )
    started = time.monotonic()
    say(f"{version.name}: fetching the base")
    base = fetch(
        version.base_url or version.base_path or "",
        out / "downloads" / version.sha256,
        version.sha256,
        on_bytes=on_bytes,
    )
    (out / "versions").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version.name}.", dir=out / "versions"))
    try:
        image = tmp / store.ROOTFS
        fmt = _make_image(base, image, version.size_bytes, tmp, say, version.name)
        say(f"{version.name}: writing Smith's guest pieces and the overlay")
        with tempfile.TemporaryDirectory(dir=tmp) as staging:
            smith_dir = Path(staging) / "smith"
            smith_dir.mkdir()
            for name, src in pieces.items():
                shutil.copyfile(src, smith_dir / name)
                (smith_dir / name).chmod(0o644 if name == "agent.py" else 0o755)
            ext4.write_tree(image, Path(staging))
        overlay_entries = ext4.write_tree(image, version.overlay_dir) if version.overlay_dir else 0
        ext4.check(image)
        runner_version = (ext4.read_file(image, RUNNER_VERSION_FILE) or "").strip() or None
        checked = _preflight(image, runner_version, tmp, say, version.name) if runner_version else None
        if version.kernel is not None:
            shutil.copyfile(version.kernel, tmp / store.KERNEL)
        say(f"{version.name}: checksumming")
        manifest = {
            "name": version.name,
            "description": version.description,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 3),
            "inputs": inputs,
            "base": {"format": fmt, "bytes": base.stat().st_size, "sha256": version.sha256},
            "overlay_entries": overlay_entries,
            "rootfs": {
                "file": store.ROOTFS,
                "bytes": image.stat().st_size,
                "allocated_bytes": image.stat().st_blocks * 512,
                "sha256": sha256_file(image),
            },
            "kernel": {"file": store.KERNEL, "sha256": inputs["kernel_sha256"]} if version.kernel else None,
            "runner_version": runner_version,
            "runner_preflight": checked,
        }
        (tmp / store.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)
        tmp.rename(store.version_dir(out, version.name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"{version.name}: built")
    built = store.built(out, version.name)
    assert built is not None
    return built, True


def _preflight(image: Path, runner_version: str, tmp: Path, say: Say, name: str) -> dict[str, Any]:
    """GitHub's runner checked in a copy of the image's tree (``smith.rootfs.preflight``)."""
    from smith.rootfs.preflight import preflight

    say(f"{name}: checking GitHub's runner {runner_version} in the image")
    tree = tmp / "preflight"
    tree.mkdir()
    try:
        ext4.run("debugfs", "-R", f"rdump / {tree}", str(image))
        return preflight(tree, runner_version)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _make_image(base: Path, image: Path, size: int | None, tmp: Path, say: Say, name: str) -> str:
    """The base as an ext4 image at ``image``: copied (sparse/reflink) and grown, or made from a tar's tree."""
    if ext4.is_ext4(base):
        say(f"{name}: copying the ext4 base")
        ext4.sparse_copy(base, image)
        if size is not None:
            ext4.grow(image, size)
        return "ext4"
    say(f"{name}: unpacking the base")
    tree = tmp / "tree"
    tree.mkdir()
    done = subprocess.run(
        ["tar", "-xpf", str(base), "-C", str(tree), "--numeric-owner"],
        capture_output=True,
        env=minimal_env(),
        timeout=1800,
        check=False,
    )
    if done.returncode:
        raise ConfigError(f"the base is neither an ext4 image nor a tar archive tar can read: {done.stderr[-300:]!r}")
    need = ext4.tree_size(tree) * 5 // 4 + (32 << 20)  # room for ext4 metadata, /smith and the overlay
    if size is not None and size < need:
        raise ConfigError(f"version {name}: size {size >> 20} MiB is too small for the base (about {need >> 20} MiB)")
    say(f"{name}: making the ext4 image")
    ext4.make_from_tree(image, tree, size or need)
    shutil.rmtree(tree)
    return "tar"
