"""The guest agent's event channel (vsock under Firecracker; a Unix socket here, as the fake's guest has it)."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.agent.guestagent import AGENT, load_agent

CONFIG = {"job": {"id": "j1", "runner_class": "x", "vcpus": 1, "memory_mib": 512, "run": "echo one; echo two"}}


@contextlib.contextmanager
def guest_on_channel(workdir: Path, config: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """The guest agent given ``config`` on stdin (then closed) and its channel's connection, as the host takes it."""
    with tempfile.TemporaryDirectory(prefix="ev", dir="/tmp") as short:  # Unix socket paths are short
        path = str(Path(short) / "v.sock_1024")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            server.listen(1)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(workdir), "--events-socket", path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(config).encode())
            proc.stdin.close()
            conn, _ = server.accept()
            with conn:
                yield proc, conn


def test_events_go_over_the_channel_and_the_agent_waits_for_the_hosts_close(tmp_path: Path) -> None:
    with guest_on_channel(tmp_path, CONFIG) as (proc, conn):
        assert proc.stdout is not None
        received = b""
        while chunk := conn.recv(65536):  # until the agent shuts down its side
            received += chunk
        assert proc.poll() is None  # it waits for this end to close: then it knows everything arrived
        conn.close()
        assert proc.wait(timeout=30) == 0
        console = proc.stdout.read()
    events = [json.loads(line) for line in received.decode().splitlines()]
    assert [e["type"] for e in events] == ["started", "line", "line", "exit"]
    assert [e["line"] for e in events if e["type"] == "line"] == ["one", "two"]
    assert console == b""  # nothing of the job on the console


def test_nobody_listening_means_the_console(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path), "--events-socket", "/nonexistent/v"],
        input=json.dumps(CONFIG),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["type"] for e in events] == ["started", "line", "line", "exit"]


def test_a_channel_that_breaks_mid_job_hands_the_rest_to_the_console() -> None:
    agent = load_agent()

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("the host went away")

    console = io.StringIO()
    out = agent.Output(Broken(), [], fallback=console)
    out.emit("line", stream="stdout", line="a")
    out.emit("exit", stream="system", exit_code=0)
    assert [json.loads(line)["type"] for line in console.getvalue().splitlines()] == ["line", "exit"]


def test_steps_mode_without_a_two_way_channel_is_refused(tmp_path: Path) -> None:
    """Under Firecracker the config comes from MMDS (here: a file, no stream either): with no vsock channel
    there is nowhere to read commands from, so the agent says why and ends instead of waiting or running."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "steps": True}))
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path), "--config-file", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 125
    assert any("steps mode needs a two-way channel (vsock)" in e.get("line", "") for e in events)
    assert not any(e.get("line") == "one" for e in events)  # the job's script did not run


def test_steps_come_back_on_the_event_channel(tmp_path: Path) -> None:
    """The host writes its commands on the connection the guest opened; the guest reads them between steps."""
    with guest_on_channel(tmp_path, {**CONFIG, "steps": True}) as (proc, conn):  # stdin ends after the config
        assert proc.stdout is not None
        with conn.makefile("rwb") as channel:
            assert json.loads(channel.readline())["type"] == "started"
            channel.write(b'{"argv": ["sh", "-c", "echo stepped; cat f"], "write": {"f": "written"}}\n')
            channel.flush()
            got = [json.loads(channel.readline()) for _ in range(3)]
            assert [(e["type"], e.get("line")) for e in got[:2]] == [("line", "stepped"), ("line", "written")]
            assert (got[2]["type"], got[2]["exit_code"]) == ("step", 0)
            channel.write(b'{"end": true}\n')
            channel.flush()
            assert json.loads(channel.readline())["type"] == "exit"
            assert channel.readline() == b""  # the guest's end: it waits for this end to close
        conn.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""
