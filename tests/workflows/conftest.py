"""Run `smith run` in-process on a copy of a corpus repository, on the sandbox backend."""

from __future__ import annotations

import json
import shutil
import subprocess
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
