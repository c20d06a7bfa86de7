"""The rootfs pipeline: build from a rootfs.yaml (tar or ext4 base, path or URL), verify, activate, list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smith.cli import app
from smith.rootfs import store
from smith.rootfs.fetch import fetch
from tests.rootfs.support import RangeServer, debugfs_cat, ext4_base, sha256, tar_base, write_config

pytestmark = pytest.mark.skipif(
    not (shutil.which("debugfs") and shutil.which("mkfs.ext4") and shutil.which("busybox")),
    reason="needs e2fsprogs (debugfs, mkfs.ext4) and busybox-static",
)


def smith(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tar_base(tmp_path / "base.tar.gz", {"etc/os-release": b"NAME=tiny\n", "usr/bin/hello": b"#!/bin/sh\n"})


def test_build_applies_overlay_and_guest_pieces_and_activates_the_default(tmp_path: Path, base: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc" / "motd").write_text("built by smith\n")
    (overlay / "etc" / "os-release").write_text("NAME=overlaid\n")
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "rootfs.yaml",
        out,
        [{"name": "v1", "base_path": str(base), "sha256": sha256(base), "overlay_dir": "overlay", "size": "64M"}],
        default="v1",
    )
    code, output = smith("rootfs", "build", "--config", str(cfg), "--json")
    assert code == 0, output
    assert json.loads(output) == {
        "versions": [{"name": "v1", "dir": str(out / "versions" / "v1"), "built": True}],
        "activated": "v1",
    }
    image = out / "versions" / "v1" / "rootfs.ext4"
    assert debugfs_cat(image, "/etc/motd") == b"built by smith\n"
    assert debugfs_cat(image, "/etc/os-release") == b"NAME=overlaid\n"  # the overlay wins over the base
    assert debugfs_cat(image, "/usr/bin/hello") == b"#!/bin/sh\n"
    assert (
        debugfs_cat(image, "/smith/agent.py") == (Path(__file__).parents[2] / "src/smith/guest/agent.py").read_bytes()
    )
    manifest = json.loads((out / "versions" / "v1" / "manifest.json").read_text())
    assert manifest["base"] == {"format": "tar", "bytes": base.stat().st_size, "sha256": sha256(base)}
    assert manifest["rootfs"]["sha256"] == sha256(image)
    assert manifest["rootfs"]["bytes"] == 64 << 20
    assert manifest["inputs"]["overlay_sha256"] and manifest["built_at"]
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
    # building again changes nothing; a changed overlay under the same name is refused (versions are immutable)
    assert smith("rootfs", "build", "--config", str(cfg), "--json")[0] == 0
    (overlay / "etc" / "motd").write_text("changed\n")
    code, output = smith("rootfs", "build", "--config", str(cfg))
    assert code == 1 and "immutable" in output


def test_a_tampered_base_is_refused_and_nothing_is_written_or_activated(tmp_path: Path, base: Path) -> None:
    out = tmp_path / "out"
    good = sha256(base)
    cfg = write_config(tmp_path / "rootfs.yaml", out, [{"name": "v1", "base_path": str(base), "sha256": good}], "v1")
    with base.open("ab") as f:
        f.write(b"tampered")
    code, output = smith("rootfs", "build", "--config", str(cfg))
    assert code == 1 and "sha256" in output and "refused" in output
    assert store.names(out) == [] and store.active(out) is None
    assert not list((out / "downloads").iterdir())  # no partial file left either
    assert not [p for p in (out / "versions").iterdir()] if (out / "versions").exists() else True


def test_activate_switches_atomically_and_keeps_the_old_version(tmp_path: Path, base: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    ext = ext4_base(tmp_path / "base.ext4", tree)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "rootfs.yaml",
        out,
        [
            {"name": "v1", "base_path": str(base), "sha256": sha256(base), "description": "from a tar"},
            {"name": "v2", "base_path": str(ext), "sha256": sha256(ext), "size": "32M"},
        ],
        default="v1",
    )
    assert smith("rootfs", "build", "--config", str(cfg))[0] == 0
    first = store.active(out)
    assert first is not None and first.name == "v1"
    assert store.built(out, "v2") is not None and store.built(out, "v2").manifest["base"]["format"] == "ext4"  # type: ignore[union-attr]
    assert smith("rootfs", "activate", "--config", str(cfg), "v2")[0] == 0
    assert os.readlink(out / "active") == "versions/v2"
    assert first.rootfs.is_file()  # a VM booted from v1 still has its disk
    code, output = smith("rootfs", "list", "--config", str(cfg), "--json")
    rows = {r["name"]: r for r in json.loads(output)}
    assert rows["v2"]["active"] and not rows["v1"]["active"] and rows["v1"]["default"]
    assert rows["v1"]["description"] == "from a tar"
    code, output = smith("rootfs", "activate", "--config", str(cfg), "nope")
    assert code == 1 and "no version 'nope'" in output
    assert os.readlink(out / "active") == "versions/v2"


def test_the_module_form_runs_the_same_commands(tmp_path: Path, base: Path) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "rootfs.yaml", out, [{"name": "ci", "base_path": str(base), "sha256": sha256(base)}])
    run = [sys.executable, "-m", "smith.rootfs.cli"]
    done = subprocess.run([*run, "build", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*run, "activate", "--config", str(cfg), "ci"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert os.readlink(out / "active") == "versions/ci"
    done = subprocess.run([*run, "activate", "--config", str(cfg), "x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("smith: error:") and "Traceback" not in done.stderr


def test_a_cut_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    server = RangeServer(data, cut_at=1 << 20)
    with server.serve() as url:
        seen: list[tuple[int, int | None]] = []
        dest = fetch(url, tmp_path / "base", hashlib_sha(data), on_bytes=lambda d, t: seen.append((d, t)), backoff=0)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0] and server.requests[1]["Range"] == f"bytes={1 << 20}-"
    assert server.sent == len(data)  # nothing was sent twice
    assert seen[-1] == (len(data), len(data))


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    from smith.rootfs.fetch import ChecksumMismatch

    server = RangeServer(b"x" * 1000)
    with server.serve() as url, pytest.raises(ChecksumMismatch):
        fetch(url, tmp_path / "base", "0" * 64, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "rootfs.yaml"
    cfg.write_text("rootfs: {output_dir: out}\nversions:\n  - {name: v1, sha256: abc}\n")
    code, output = smith("rootfs", "list", "--config", str(cfg))
    assert code == 1 and "versions.0" in output and "sha256" in output


def hashlib_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
