"""The guest agent's command line (parsed by hand, argparse being a third of its start under emulation) and
what its start imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.guestagent import AGENT
from tests.agent.guestagent import load_agent as load


def test_options_flags_and_defaults() -> None:
    a = load().Args.parse(["--config-port", "/dev/p", "--out=/dev/o", "--announce", "--set-clock", "--workdir", "/w"])
    assert (a.config_port, a.out, a.workdir, a.announce, a.set_clock, a.set_net) == (
        "/dev/p",
        "/dev/o",
        "/w",
        True,
        True,
        False,
    )
    assert (a.config_file, a.events_socket, a.mmds, a.hosts_file) == (None, None, None, "/etc/hosts")


def test_mmds_takes_an_address_or_firecrackers() -> None:
    agent = load()
    assert agent.Args.parse(["--mmds", "--out", "/dev/ttyS0"]).mmds == agent.MMDS_IP
    assert agent.Args.parse(["--mmds"]).mmds == agent.MMDS_IP
    assert agent.Args.parse(["--mmds", "10.0.0.1"]).mmds == "10.0.0.1"


@pytest.mark.parametrize("argv", [["--bogus"], ["--config-file"], ["--announce=yes"], ["stray"]])
def test_what_it_does_not_know_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load().Args.parse(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_help() -> None:
    res = subprocess.run([sys.executable, "-I", "-S", str(AGENT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "--config-port" in res.stdout and "--set-hosts" in res.stdout


def test_start_imports_neither_argparse_nor_shutil() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('a', {str(AGENT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(' '.join(m for m in ('argparse', 'shutil', 'socket', 'urllib.parse') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []


def test_the_job_is_first_for_the_oom_killer(tmp_path: Path) -> None:
    config = {
        "job": {
            "id": "j1",
            "runner_class": "x",
            "vcpus": 1,
            "memory_mib": 512,
            "run": "sleep 0.2; cat /proc/$$/oom_score_adj",
        }
    }
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [e["line"] for e in map(json.loads, res.stdout.splitlines()) if e["type"] == "line"]
    assert lines == ["500"], res.stderr


def test_preload_imports_what_restored_jobs_may_need() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('a', {str(AGENT)!r})\n"
        "agent = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(agent)\n"
        "assert agent.Args.parse(['--preload']).preload and not agent.Args.parse([]).preload\n"
        "agent.preload()\n"
        "print(' '.join(m for m in ('socket', 'urllib.parse') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["socket", "urllib.parse"]
