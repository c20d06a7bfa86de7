"""GitHub's runner is checked in each image: its libraries resolve against the image's own, `Runner.Listener
--version` runs inside the tree and prints the version the manifest records; a runner older than
SMITH_RUNNER_MIN_VERSION is warned about in `smith rootfs list` and at agent start."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smith.cli import app
from smith.images.build import static_busybox
from smith.rootfs.base import finish
from smith.rootfs.config import BaseSpec, RunnerTarball
from smith.rootfs.preflight import RunnerPreflightFailed, missing_libraries, read_elf
from smith.rootfs.runnerversion import agent_warning
from smith.testing.standin import STANDIN
from tests.rootfs.support import build_tree, sha256

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the runner runs inside the image's tree)")
needs_busybox = pytest.mark.skipif(static_busybox() is None, reason="needs busybox-static (the tree's /bin/sh)")


def runner_tarball(path: Path, listener: bytes) -> Path:
    """A tarball shaped like actions/runner's: run.sh and the stand-in's run-helper, bin/Runner.Listener."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ("run.sh", "run-helper.sh"):
            tar.add(STANDIN / name, f"./{name}")
        info = tarfile.TarInfo("./bin/Runner.Listener")
        info.size, info.mode = len(listener), 0o755
        tar.addfile(info, io.BytesIO(listener))
    return path


def tree_with_sh(root: Path) -> Path:
    """A tiny image tree: /etc's user files and a static busybox as /bin/sh."""
    (root / "etc").mkdir(parents=True)
    for name, line in (("passwd", "root:x:0:0::/root:/bin/sh"), ("group", "root:x:0:"), ("shadow", "root:*:1::::::")):
        (root / "etc" / name).write_text(line + "\n")
    (root / "bin").mkdir()
    busybox = static_busybox()
    assert busybox is not None
    shutil.copy(busybox, root / "bin/sh")
    return root


def spec(tarball: Path) -> BaseSpec:
    return BaseSpec(runner=RunnerTarball(path=tarball, sha256=sha256(tarball)))


GOOD = b'#!/bin/sh\n[ "$1" = --version ] && { echo 2.321.0; exit 0; }\nexit 1\n'


@root_only
@needs_busybox
def test_the_runner_runs_in_the_base_and_in_the_built_version(tmp_path: Path) -> None:
    tarball = runner_tarball(tmp_path / "actions-runner-linux-x64-2.321.0.tar.gz", GOOD)
    tree = tree_with_sh(tmp_path / "tree")
    info = finish(tree, spec(tarball), tmp_path / "downloads")
    assert info["runner_preflight"] == {"checked": True, "libraries": "resolve", "ran": True, "version": "2.321.0"}
    cfg, out = build_tree(tmp_path, tree)
    manifest = json.loads((out / "versions/ci/manifest.json").read_text())
    assert manifest["runner_preflight"]["ran"] and manifest["runner_version"] == "2.321.0"
    assert CliRunner().invoke(app, ["rootfs", "activate", "ci", "--config", str(cfg)]).exit_code == 0
    # GitHub's minimum moved past the image's runner: warned in the list and at agent start.
    listed = CliRunner().invoke(
        app, ["rootfs", "list", "--config", str(cfg)], env={"SMITH_RUNNER_MIN_VERSION": "2.322.0"}
    )
    assert listed.exit_code == 0 and "older than SMITH_RUNNER_MIN_VERSION 2.322.0" in " ".join(listed.output.split())
    as_json = CliRunner().invoke(
        app, ["rootfs", "list", "--json", "--config", str(cfg), "--runner-min-version", "2.321.0"]
    )
    assert json.loads(as_json.output)[0]["runner_too_old"] is False
    assert "runner 2.321.0, older than" in (agent_warning(out, None, "2.322.0") or "")
    assert agent_warning(out, None, "2.321.0") is None and agent_warning(out, None, None) is None


@root_only
@needs_busybox
def test_a_runner_that_does_not_start_is_refused_with_its_own_words(tmp_path: Path) -> None:
    icu = b"#!/bin/sh\necho 'Process terminated. No valid ICU package installed on the system.' >&2\nexit 134\n"
    tarball = runner_tarball(tmp_path / "actions-runner-linux-x64-2.321.0.tar.gz", icu)
    with pytest.raises(RunnerPreflightFailed, match=r"exited 134: Process terminated\. No valid ICU"):
        finish(tree_with_sh(tmp_path / "a"), spec(tarball), tmp_path / "downloads")
    other = runner_tarball(tmp_path / "actions-runner-linux-x64-2.330.0.tar.gz", GOOD)
    with pytest.raises(RunnerPreflightFailed, match=r"reports version 2\.321\.0, but the image records 2\.330\.0"):
        finish(tree_with_sh(tmp_path / "b"), spec(other), tmp_path / "downloads")


def test_the_runners_libraries_must_resolve_against_the_images_own(tmp_path: Path) -> None:
    host_elf = Path("/usr/bin/ls")
    needed = (read_elf(host_elf) or {}).get("needed") or []
    if not needed:
        pytest.skip("this machine's ls links no library")
    bin_dir = tmp_path / "opt/actions-runner/bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(host_elf, bin_dir / "Runner.Listener")
    assert missing_libraries(tmp_path, bin_dir) == [f"{n} (needed by bin/Runner.Listener)" for n in needed]
    libs = tmp_path / "usr/lib/x86_64-linux-gnu"
    libs.mkdir(parents=True)
    for name in needed:
        (libs / name).write_bytes(b"")
    (tmp_path / "lib").symlink_to("usr/lib")  # merged /usr, as Debian's
    assert missing_libraries(tmp_path, bin_dir) == []
    shutil.copy(host_elf, bin_dir / "libcoreclr.so")  # a .NET runner: what .NET opens at run time counts too
    missing = missing_libraries(tmp_path, bin_dir)
    assert missing[0].startswith("ICU (libicu72 on bookworm") and len(missing) == 4
    for name in ("libicuuc.so.72", "libssl.so.3", "libgssapi_krb5.so.2", "libz.so.1"):
        (libs / name).write_bytes(b"")
    assert missing_libraries(tmp_path, bin_dir) == []


def test_the_stand_in_runner_answers_version() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(STANDIN / "bin/Runner.Listener"), "--version"], capture_output=True)
    assert done.returncode == 0 and done.stdout.decode().strip() == "2.321.0"


def test_the_agent_warns_at_start_when_its_images_runner_is_too_old(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image from `smith rootfs base` (its manifest beside it) booted directly (SMITH_AGENT_ROOTFS)."""
    from smith.agent.settings import AgentSettings
    from smith.cli.agent import _warn_old_runner

    image = tmp_path / "bookworm.ext4"
    image.write_bytes(b"")
    (tmp_path / "bookworm.ext4.json").write_text(json.dumps({"runner_version": "2.321.0"}))
    _warn_old_runner(AgentSettings(agent_rootfs=image, runner_min_version="2.330.0"))
    said = " ".join(capsys.readouterr().out.split())
    assert f"image {image} carries GitHub's runner 2.321.0, older than SMITH_RUNNER_MIN_VERSION 2.330.0" in said
    _warn_old_runner(AgentSettings(agent_rootfs=image, runner_min_version="2.321.0"))
    assert "older than" not in capsys.readouterr().out
