"""The guest agent's event channel (vsock under Firecracker; a Unix socket here, as the fake's guest has it)."""

from __future__ import annotations

import importlib.util
import io
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

AGENT = Path(__file__).resolve().parents[2] / "src" / "smith" / "guest" / "agent.py"
CONFIG = {"job": {"id": "j1", "runner_class": "x", "vcpus": 1, "memory_mib": 512, "run": "echo one; echo two"}}


def load_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smith_guest_agent", AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_events_go_over_the_channel_and_the_agent_waits_for_the_hosts_close(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ev", dir="/tmp") as short:  # Unix socket paths are short
        path = str(Path(short) / "v.sock_1024")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            server.listen(1)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(AGENT), "--workdir", str(tmp_path), "--events-socket", path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(CONFIG).encode())
            proc.stdin.close()
            conn, _ = server.accept()
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
