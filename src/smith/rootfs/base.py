"""``smith rootfs base``: a runner-ready base image from Debian packages (mmdebstrap, else debootstrap).

What a job expects: bash, coreutils, git, curl, ca-certificates, python3, node, tar/zstd/gzip, sudo, and a
``runner`` user (uid 1001, passwordless sudo); the ``docker`` profile adds build-essential and Docker. GitHub's
runner (``actions/runner``) is unpacked from a tarball (URL or path, sha256 required) into
``/opt/actions-runner``, owned by ``runner``, with its libraries (ICU, OpenSSL, Kerberos, zlib, LTTng); its
version goes to ``/opt/actions-runner/.smith-runner-version``, which ``smith rootfs build`` copies into the
version's manifest. The runner is checked in the tree (``smith.rootfs.preflight``: its libraries resolve, and
``bin/Runner.Listener --version`` runs and prints that version), else the base is refused. Smith's guest
pieces are added too (``/smith``), so the base boots as it is.

Out comes an ext4 image (``mkfs.ext4 -d``, no loop mount) and, beside it, ``<image>.json``: suite, mirror,
profile, packages with versions, runner version, sha256, build time. Needs root (the bootstrap does).
"""

from __future__ import annotations

import json
import os
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
from smith.rootfs import ext4
from smith.rootfs.build import RUNNER_VERSION_FILE, guest_pieces
from smith.rootfs.config import BaseSpec, parse_size
from smith.rootfs.fetch import fetch, sha256_file
from smith.rootfs.preflight import preflight

RUNNER_UID = 1001
RUNNER_DIR = "opt/actions-runner"
Say = Callable[[str], None]


def _run(argv: list[str], timeout: float = 3600) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, env=minimal_env(), timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"{argv[0]} is missing (apt-get install mmdebstrap)") from exc
    if done.returncode:
        err = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise ConfigError(f"{Path(argv[0]).name} failed: {err[-800:]}")
    return done.stdout.decode(errors="replace")


def bootstrap(spec: BaseSpec, tree: Path) -> None:
    """A minimal Debian of ``spec.suite`` with the packages in ``tree`` (which must not exist or be empty)."""
    pkgs = ",".join(spec.packages())
    if shutil.which("mmdebstrap"):
        _run(["mmdebstrap", "--variant=minbase", f"--include={pkgs}", "--components=main",
              "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*", spec.suite, str(tree), spec.mirror])  # fmt: skip
    elif shutil.which("debootstrap"):
        _run(["debootstrap", "--variant=minbase", f"--include={pkgs}", spec.suite, str(tree), spec.mirror])
    else:
        raise ConfigError("neither mmdebstrap nor debootstrap is installed (apt-get install mmdebstrap)")


def finish(tree: Path, spec: BaseSpec, downloads: Path) -> dict[str, Any]:
    """The runner user, its sudo rule, GitHub's runner (checked: ``preflight``), Smith's pieces; what went in."""
    add_user(tree, "runner", RUNNER_UID)
    sudoers = tree / "etc/sudoers.d/runner"
    sudoers.parent.mkdir(parents=True, exist_ok=True)
    sudoers.write_text("runner ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    version, checked = None, None
    if spec.runner is not None:
        tarball = fetch(spec.runner.source, downloads / spec.runner.sha256, spec.runner.sha256)
        version = install_runner(tree, tarball, spec.runner.runner_version())
        checked = preflight(tree, version)
    smith_dir = tree / "smith"
    smith_dir.mkdir(exist_ok=True)
    for name, src in guest_pieces().items():
        shutil.copyfile(src, smith_dir / name)
        (smith_dir / name).chmod(0o644 if name == "agent.py" else 0o755)
    for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for path in (tree / junk).glob("*"):
            if path.is_file() and path.name != "lock":
                path.unlink()
    return {"runner_version": version, "runner_preflight": checked}


def add_user(tree: Path, name: str, uid: int) -> None:
    """``name`` with its group, home and bash, written into the tree's files (no chroot needed)."""
    etc = tree / "etc"
    home = tree / "home" / name
    lines = {
        "passwd": f"{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n",
        "group": f"{name}:x:{uid}:\n",
        "shadow": f"{name}:!:19000:0:99999:7:::\n",
    }
    for file, line in lines.items():
        path = etc / file
        text = path.read_text() if path.exists() else ""
        if not any(row.split(":")[0] == name for row in text.splitlines()):
            path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o750)
    os.chown(home, uid, uid)


def install_runner(tree: Path, tarball: Path, version: str) -> str:
    dest = tree / RUNNER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-xzf", str(tarball), "-C", str(dest), "--no-same-owner"])
    (tree / RUNNER_VERSION_FILE.lstrip("/")).write_text(version + "\n")
    for root, dirs, files in os.walk(dest):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), RUNNER_UID, RUNNER_UID)
    os.chown(dest, RUNNER_UID, RUNNER_UID)
    return version


def make_base(spec: BaseSpec, output: Path, downloads: Path, say: Say | None = None) -> dict[str, object]:
    """Bootstrap, finish and write the image and its sidecar manifest atomically; the manifest."""
    say = say or (lambda _m: None)
    if os.geteuid() != 0:
        raise ConfigError("smith rootfs base needs root (the bootstrap installs packages as root)")
    started = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-", dir=output.parent) as tmp:
        tree = Path(tmp) / "tree"
        say(f"bootstrapping {spec.suite} from {spec.mirror} ({len(spec.packages())} packages)")
        bootstrap(spec, tree)
        say("adding the runner user, GitHub's runner and Smith's pieces")
        info = finish(tree, spec, downloads)
        packages = _run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", "${Package}=${Version}\\n"])
        say("writing the ext4 image")
        image = Path(tmp) / "base.ext4"
        size = parse_size(spec.size) if spec.size else ext4.tree_size(tree) * 5 // 4 + (256 << 20)
        ext4.make_from_tree(image, tree, size)
        manifest: dict[str, object] = {
            "suite": spec.suite,
            "mirror": spec.mirror,
            "profile": spec.profile,
            "packages": sorted(packages.split()),
            "runner_version": info["runner_version"],
            "runner_preflight": info["runner_preflight"],
            "sha256": sha256_file(image),
            "bytes": image.stat().st_size,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        os.replace(image, output)
    output.with_name(output.name + ".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
