"""`smith rootfs base`: the runner user, GitHub's runner from a checked tarball, the manifest; a real bootstrap."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smith.cli import app
from smith.rootfs import store
from smith.rootfs.base import finish, make_base
from smith.rootfs.config import BaseSpec, RunnerTarball
from smith.rootfs.fetch import ChecksumMismatch
from tests.rootfs.support import build_tree, debugfs_cat, sha256

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (files owned by the runner user)")
RUN_SH = b"#!/bin/bash\necho 'stand-in runner' \"$@\"\n"


def stand_in_runner(path: Path) -> Path:
    """A tarball shaped like actions/runner's: run.sh, config.sh, bin/."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in (("./run.sh", RUN_SH, 0o755), ("./config.sh", RUN_SH, 0o755), ("./bin/x", b"x", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 4242, 4242
            tar.addfile(info, io.BytesIO(data))
    return path


def tiny_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    return root


@root_only
def test_finish_adds_the_runner_user_and_githubs_runner_and_the_version_reaches_the_manifest(tmp_path: Path) -> None:
    tarball = stand_in_runner(tmp_path / "actions-runner-linux-x64-2.321.0.tar.gz")
    spec = BaseSpec(runner=RunnerTarball(path=tarball, sha256=sha256(tarball)))
    tree = tiny_tree(tmp_path / "tree")
    assert finish(tree, spec, tmp_path / "downloads")["runner_version"] == "2.321.0"
    assert "runner:x:1001:1001::/home/runner:/bin/bash" in (tree / "etc/passwd").read_text()
    assert "runner:x:1001:" in (tree / "etc/group").read_text() and "runner:!" in (tree / "etc/shadow").read_text()
    assert (tree / "etc/sudoers.d/runner").stat().st_mode & 0o777 == 0o440
    run = tree / "opt/actions-runner/run.sh"
    assert run.read_bytes() == RUN_SH and os.access(run, os.X_OK)
    for path in [tree / "opt/actions-runner", *(tree / "opt/actions-runner").rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (1001, 1001), path
    assert (tree / "smith/init").is_file() and (tree / "smith/agent.py").is_file()
    # Made into an image and built as a version: the manifest says which runner it has.
    _, out = build_tree(tmp_path, tree)
    built = store.built(out, "ci")
    assert built is not None and built.manifest["runner_version"] == "2.321.0"
    assert debugfs_cat(built.rootfs, "/opt/actions-runner/run.sh") == RUN_SH


@root_only
def test_a_runner_tarball_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    tarball = stand_in_runner(tmp_path / "runner.tar.gz")
    spec = BaseSpec(runner=RunnerTarball(path=tarball, sha256="0" * 64, version="2.0.0"))
    tree = tiny_tree(tmp_path / "tree")
    with pytest.raises(ChecksumMismatch):
        finish(tree, spec, tmp_path / "downloads")
    assert not (tree / "opt/actions-runner/run.sh").exists()


def test_the_base_section_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "rootfs.yaml"
    cfg.write_text("rootfs: {output_dir: out}\nbase: {suite: hamm}\n")
    result = CliRunner().invoke(app, ["rootfs", "base", "--config", str(cfg)])
    assert result.exit_code == 1 and "suite is one of bookworm" in result.output
    cfg.write_text("rootfs: {output_dir: out}\n")
    result = CliRunner().invoke(app, ["rootfs", "base", "--config", str(cfg), "--profile", "gpu"])
    assert result.exit_code == 1 and "profile is one of minimal, docker" in result.output


MIRROR = "http://deb.debian.org/debian"


def _mirror_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{MIRROR}/dists/bookworm/Release", timeout=5) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.mirror
@pytest.mark.timeout(1200)
@root_only
@pytest.mark.skipif(shutil.which("mmdebstrap") is None and shutil.which("debootstrap") is None, reason="no mmdebstrap")
def test_a_real_bookworm_base_has_what_jobs_expect(tmp_path: Path) -> None:
    """Minutes (134 s here): downloads and installs the packages from the mirror."""
    if not _mirror_reachable():
        pytest.skip(f"the Debian mirror {MIRROR} is not reachable from here")
    tarball = stand_in_runner(tmp_path / "actions-runner-linux-x64-2.321.0.tar.gz")
    spec = BaseSpec(mirror=MIRROR, runner=RunnerTarball(path=tarball, sha256=sha256(tarball)))
    out = tmp_path / "bookworm.ext4"
    manifest = make_base(spec, out, tmp_path / "downloads")
    assert manifest["sha256"] == sha256(out) and manifest["runner_version"] == "2.321.0"
    names = {p.split("=")[0] for p in manifest["packages"]}  # type: ignore[attr-defined]
    assert {"git", "nodejs", "python3", "sudo", "zstd", "curl", "libicu72", "libssl3", "libkrb5-3"} <= names
    assert json.loads(out.with_name(out.name + ".json").read_text())["suite"] == "bookworm"
    assert b"runner:x:1001" in debugfs_cat(out, "/etc/passwd")
