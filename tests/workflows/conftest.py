"""Run `smith run` in-process on a copy of a corpus repository, on the sandbox backend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from smith.cli import app

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"
BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)")


@dataclass
class Ran:
    code: int
    runs: list[dict[str, Any]]
    log: str

    def job(self, key: str) -> dict[str, Any]:
        return next(j for r in self.runs for j in r["jobs"] if j["job"] == key)

    def results(self) -> dict[str, str]:
        return {j["job"]: j["result"] for r in self.runs for j in r["jobs"]}


def copy_repo(name: str, tmp_path: Path, git: bool = True) -> Path:
    repo = tmp_path / name
    shutil.copytree(CORPUS / name, repo)
    if git:
        env = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@e",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@e",
        }
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "corpus"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    return repo


def smith_run(*args: str, network: bool = False) -> Ran:
    net = "--network" if network else "--no-network"
    result = CliRunner().invoke(app, ["run", *args, "--backend", "sandbox", net, "--json"])
    runs = json.loads(result.stdout) if result.stdout.strip().startswith("[") else []
    return Ran(result.exit_code, runs, result.stderr)


@pytest.fixture
def qemu_base() -> Iterator[Path]:
    """A short base directory for QEMU VMs (Unix socket paths must fit), checked when the test ends: a test that
    failed, timed out or was interrupted must not leave a qemu-system process behind (any found is killed, and
    the test fails)."""
    path = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))
    yield path
    leaked = qemu_processes(path)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"qemu processes left running under {path}: {leaked}"


def qemu_processes(base: Path) -> list[int]:
    """Live qemu-system processes whose command line names ``base`` (this test's VMs, nobody else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and b"qemu-system" in argv[0] and any(str(base).encode() in a for a in argv):
            found.append(int(entry.name))
    return found
