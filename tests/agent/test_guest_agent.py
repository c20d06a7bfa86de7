"""The guest agent on its own: config channels, the event stream, exit codes, masking, long and binary output."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smith.testing.standin import install_runner
from smith.wire.guest import GuestEvent

AGENT = Path(__file__).resolve().parents[2] / "src" / "smith" / "guest" / "agent.py"


def cfg(run: str, **extra: Any) -> dict[str, Any]:
    return {"job": {"id": "j1", "runner_class": "x", "vcpus": 1, "memory_mib": 512, "run": run}, **extra}


def agent(args: list[str], stdin: str | None, tmp_path: Path) -> list[dict[str, Any]]:
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def run(tmp_path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    return agent([], json.dumps(config), tmp_path)


def out(events: list[dict[str, Any]], stream: str = "stdout") -> list[str]:
    return [e["line"] for e in events if e["type"] == "line" and e["stream"] == stream]


def test_events_are_started_lines_exit_in_order(tmp_path: Path) -> None:
    events = run(tmp_path, cfg("echo one; echo two >&2; echo three; exit 5"))
    parsed = [GuestEvent.model_validate(e) for e in events]  # every event matches the wire model
    assert parsed[0].type == "started" and parsed[-1].type == "exit" and parsed[-1].exit_code == 5
    assert [e.type for e in parsed].count("started") == 1 and [e.type for e in parsed].count("exit") == 1
    assert [e.seq for e in parsed] == list(range(1, len(parsed) + 1))
    assert all(b.ts >= a.ts for a, b in itertools.pairwise(parsed))
    assert out(events) == ["one", "three"] and out(events, "stderr") == ["two"]


def test_script_runs_with_errexit_in_the_work_dir(tmp_path: Path) -> None:
    events = run(tmp_path, cfg("pwd\nfalse\necho unreachable"))
    assert out(events) == [str(tmp_path)] and events[-1]["exit_code"] == 1


def test_cache_env_and_extra_env_and_secrets_masked(tmp_path: Path) -> None:
    config = cfg(
        'echo "$ACTIONS_CACHE_URL|$ACTIONS_RESULTS_URL|$ACTIONS_RUNTIME_TOKEN|$FOO"\n'
        'echo "again $ACTIONS_RUNTIME_TOKEN"',
        cache={"url": "http://10.0.0.1:9000", "token": "s3cr3t-cache-token"},
        env={"FOO": "bar"},
    )
    events = run(tmp_path, config)
    assert out(events) == ["http://10.0.0.1:9000/|http://10.0.0.1:9000/|***|bar", "again ***"]
    assert "s3cr3t-cache-token" not in json.dumps(events)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is under a root-only 0700 directory): a root guest
    runs GitHub's runner as an unprivileged user, who must reach the work dir."""
    path = Path(tempfile.mkdtemp(prefix="smith-guest-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_runner(base: Path, run_sh: str, **files: str) -> Path:
    runner = base / "runner"
    runner.mkdir()
    for name, text in {"run.sh": run_sh, **files}.items():
        (runner / name).write_text(text)
        (runner / name).chmod(0o755)
    return runner


UNPRIVILEGED = {"runner_user": "nobody"}  # a root guest's runner user, here


def test_jit_config_is_handed_over_in_the_environment_never_argv(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    runner = fake_runner(
        open_dir,
        '#!/bin/sh\necho "args: $#"\necho "config: $ACTIONS_RUNNER_INPUT_JITCONFIG"\n'
        'echo "Running job: build"\necho "Job build completed with result: Failed"\nexit 0\n',
    )
    config = cfg("", runner={"kind": "jit", "value": "JITCONFIG-abcdef0123"}, runner_dir=str(runner), **UNPRIVILEGED)
    events = run(work, config)
    assert out(events) == ["args: 0", "config: ***", "Running job: build", "Job build completed with result: Failed"]
    assert events[-1]["exit_code"] == 0 and events[-1]["outcome"] == "failed"  # the runner's word, not run.sh's
    assert "JITCONFIG-abcdef0123" not in json.dumps(events)


def test_a_runner_that_runs_no_job_is_no_job_whatever_its_exit_code(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    runner = fake_runner(open_dir, "#!/bin/sh\necho 'Exiting runner...'\nexit 0\n")
    config = cfg("", runner={"kind": "jit", "value": "JITCONFIG-abcdef0123"}, runner_dir=str(runner), **UNPRIVILEGED)
    events = run(work, config)
    assert events[-1]["exit_code"] == 0 and events[-1]["outcome"] == "no_job"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the guest drops to the runner user only as root")
def test_a_root_guest_runs_githubs_runner_as_its_unprivileged_user_in_a_dir_it_owns(open_dir: Path) -> None:
    """GitHub's run-helper.sh refuses root (exit 1) and run.sh turns that into 0: the stand-in's pair, run as
    root, would end 'succeeded' without running anything. The guest runs them as the runner user instead, in a
    copy of the runner directory that user owns (this one is root's)."""
    work = open_dir / "work"
    work.mkdir()
    runner = install_runner(open_dir / "runner", listener=LISTENER)
    config = cfg("", runner={"kind": "jit", "value": "JITCONFIG-abcdef0123"}, runner_dir=str(runner), **UNPRIVILEGED)
    events = run(work, config)
    lines = out(events)
    assert "Must not run interactively with sudo" not in lines
    assert f"uid {pwd.getpwnam('nobody').pw_uid} wrote .runner" in lines
    assert events[-1]["outcome"] == "succeeded"
    assert any(e["line"].startswith("[_diag/Runner_1.log] listener ran") for e in events if e["type"] == "line")


LISTENER = """#!/bin/sh
set -e
ROOT=$(dirname "$(dirname "$(realpath "$0")")")
[ -n "$ACTIONS_RUNNER_INPUT_JITCONFIG" ]
echo x > "$ROOT/.runner" && echo "uid $(id -u) wrote .runner"
mkdir -p "$ROOT/_diag" && echo "listener ran" > "$ROOT/_diag/Runner_1.log"
echo "2024-01-01 00:00:00Z: Running job: build"
echo "2024-01-01 00:00:01Z: Job build completed with result: Succeeded"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_root_guest_without_the_runner_user_fails_clearly(open_dir: Path) -> None:
    runner = install_runner(open_dir / "runner")
    config = cfg("", runner={"kind": "jit", "value": "JITCONFIG-abcdef0123"}, runner_dir=str(runner))
    events = run(open_dir, {**config, "runner_user": "no-such-user-here"})
    assert events[-1]["exit_code"] == 1 and events[-1]["outcome"] == "failed"
    assert any("no user 'no-such-user-here'" in e["line"] for e in events if e["type"] == "line")


def test_registration_token_reaches_config_sh_only(open_dir: Path) -> None:
    work = open_dir / "work"
    work.mkdir()
    runner = fake_runner(
        open_dir,
        '#!/bin/sh\necho "run sees token: [$ACTIONS_RUNNER_INPUT_TOKEN]"\n',
        **{"config.sh": '#!/bin/sh\necho "config $* $ACTIONS_RUNNER_INPUT_URL $ACTIONS_RUNNER_INPUT_TOKEN"\n'},
    )
    config = cfg(
        "",
        runner={"kind": "registration", "value": "REGTOKEN-xyz", "url": "https://github.com/o/r", "runner_name": "n1"},
        runner_dir=str(runner),
        **UNPRIVILEGED,
    )
    events = run(work, config)
    lines = out(events)
    assert lines[0] == "config --unattended --ephemeral https://github.com/o/r ***"
    assert lines[1] == "run sees token: []" and events[-1]["exit_code"] == 0


def test_long_lines_are_cut_and_binary_is_replaced(tmp_path: Path) -> None:
    events = run(tmp_path, cfg("head -c 300000 /dev/zero | tr '\\0' x; echo; printf 'a\\377b\\n'; echo after"))
    lines = out(events)
    assert lines[0].endswith("[smith: line cut at 64 KiB]") and len(lines[0]) < 70_000
    assert lines[1] == "a\ufffdb" and lines[2] == "after"


def test_a_missing_command_is_reported_not_crashed(open_dir: Path) -> None:
    (open_dir / "empty").mkdir()
    config = cfg("", runner={"kind": "jit", "value": "x" * 8}, runner_dir=str(open_dir / "empty"), **UNPRIVILEGED)
    events = run(open_dir, config)
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 127 and events[-1]["outcome"] == "no_job"
    assert any("cannot start the job" in e.get("line", "") for e in events)
    events = run(open_dir, cfg("", runner={"kind": "jit", "value": "x" * 8}, runner_dir=str(open_dir / "none")))
    assert events[-1]["exit_code"] == 1 and events[-1]["outcome"] == "failed"
    assert any("cannot start GitHub's runner" in e.get("line", "") for e in events)


def test_config_file_is_waited_for_and_announced(tmp_path: Path) -> None:
    path = tmp_path / "config.json"

    def later() -> None:
        time.sleep(0.3)
        tmp = tmp_path / "config.tmp"
        tmp.write_text(json.dumps(cfg("echo late")))
        tmp.rename(path)

    threading.Thread(target=later).start()
    events = agent(["--config-file", str(path), "--announce"], None, tmp_path)
    assert events[0] == {"smith": "ready", "ts": events[0]["ts"]}
    assert out(events[1:]) == ["late"]


def test_config_port_envelope_offsets_the_clock(tmp_path: Path) -> None:
    """A port (a FIFO here) carries an envelope; the host's clock wins over a guest's stale one."""
    fifo = tmp_path / "port"
    os.mkfifo(fifo)
    host_now = time.time() + 3600  # as if the guest's clock were an hour behind
    envelope = {"config": cfg("echo via port"), "now": host_now, "seed": "00ff" * 16}

    def host() -> None:
        with open(fifo, "w") as f:
            f.write(json.dumps(envelope) + "\n")

    threading.Thread(target=host).start()
    events = agent(["--config-port", str(fifo)], None, tmp_path)
    assert out(events) == ["via port"]
    assert events[0]["ts"] >= host_now - 5  # offset, and (without --set-clock) this machine's clock untouched
    assert time.time() < host_now - 3000


def test_bad_config_line_fails_loudly(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path)],
        input="{not json",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0 and "JSONDecodeError" in res.stderr


def test_steps_mode_runs_commands_one_at_a_time_and_returns_collected_files(tmp_path: Path) -> None:
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"from the host\n"
        info = tarfile.TarInfo("src/file.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    commands = [
        {"untar": {"dest": "repo", "data": base64.b64encode(buf.getvalue()).decode()}},
        {
            "argv": ["/bin/sh", "-e", "s.sh"],
            "write": {"repo/s.sh": 'cat src/file.txt; echo "k=v" >> "$OUT"; echo "$MINE"'},
            "cwd": "repo",
            "env": {"OUT": str(tmp_path / "o"), "MINE": "x"},
            "collect": ["o"],
        },
        {"argv": ["/bin/sh", "-c", "sleep 30"], "timeout": 0.5},
        {"end": True},
        {"argv": ["/bin/sh", "-c", "echo never"]},
    ]
    stdin = json.dumps(cfg("", steps=True)) + "\n" + "".join(json.dumps(c) + "\n" for c in commands)
    events = agent([], stdin, tmp_path)
    parsed = [GuestEvent.model_validate(e) for e in events]
    steps = [e for e in parsed if e.type == "step"]
    assert [s.exit_code for s in steps] == [0, 0, 124]
    assert steps[1].files == {"o": "k=v\n"}
    assert out(events) == ["from the host", "x"]
    assert "never" not in str(events) and parsed[-1].type == "exit" and parsed[-1].exit_code == 0


def test_steps_mode_reads_the_next_command_while_a_step_runs(tmp_path: Path) -> None:
    """The host's writes never wait for a busy guest (issue 10): the agent reads its command channel in a thread
    of its own, so a command far bigger than a pipe holds goes through while the step before it still runs. Here
    that step waits (up to a minute) until the host's write of the next command has returned."""
    written = tmp_path / "written"
    wait = f'for i in $(seq 1200); do [ -e "{written}" ] && break; sleep 0.05; done; ls "{written}" >/dev/null'
    messages = [
        cfg("", steps=True),
        {"argv": ["/bin/sh", "-c", wait + " && echo first"]},
        {"argv": ["/bin/sh", "-c", "wc -c < big.txt"], "write": {"big.txt": "b" * (1 << 20)}},
    ]
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def host() -> None:
        stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        stdin.flush()
        written.touch()
        stdin.write(b'{"end": true}\n')
        stdin.close()

    threading.Thread(target=host, daemon=True).start()
    events = [json.loads(line) for line in proc.stdout]
    assert proc.wait(30) == 0
    assert out(events) == ["first", str(1 << 20)]
    assert [e["exit_code"] for e in events if e["type"] == "step"] == [0, 0]


def test_in_a_vm_the_caches_download_host_resolves_to_the_cache_before_the_job(tmp_path: Path) -> None:
    """``--set-hosts`` (a VM's init passes it): the lease's cache download host goes into /etc/hosts, mapped to
    the cache URL's host address, once, before the job starts."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost")
    cache = {"url": "http://10.9.8.7:8090", "token": "t", "download_host": "smith.blob.core.windows.net"}
    args = ["--set-hosts", "--hosts-file", str(hosts)]
    for n in (1, 2, 3):
        (tmp_path / f"w{n}").mkdir()
    events = agent(args, json.dumps(cfg(f"cat {hosts}", cache=cache)), tmp_path / "w1")
    assert out(events) == ["127.0.0.1 localhost", "10.9.8.7 smith.blob.core.windows.net"]
    agent(args, json.dumps(cfg("true", cache=cache)), tmp_path / "w2")  # a second job on the same image
    assert hosts.read_text().count("smith.blob.core.windows.net") == 1
    agent([], json.dumps(cfg("true", cache={**cache, "url": "http://10.1.1.1:8090"})), tmp_path / "w3")
    assert "10.1.1.1" not in hosts.read_text()  # without --set-hosts (a sandbox) the agent never writes it
