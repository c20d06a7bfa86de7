"""The host side of steps mode: a command and its events travel at the same time (issue 10)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from smith.adapters.sandbox import SandboxMachine
from smith.workflows.session import GuestSession

# A guest that starts answering before it has read the whole command (as a guest whose events channel and command
# channel are independent may): it reads a few bytes, writes far more events than a pipe holds, and only then
# reads the rest of the command.
GUEST = r"""
import json, sys
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
stdout.write(json.dumps({"type": "started", "ts": 0, "stream": "system"}).encode() + b"\n")  # the agent's first
head = stdin.read(16)
for i in range(20000):
    event = {"type": "line", "ts": 0, "stream": "stdout", "line": f"event {i} " + "e" * 80}
    stdout.write(json.dumps(event).encode() + b"\n")
rest = stdin.readline()
stdout.write(json.dumps({"type": "step", "ts": 0, "stream": "system", "exit_code": 0,
                         "files": {"size": str(len(head + rest))}}).encode() + b"\n")
stdout.flush()
"""


async def test_a_command_is_written_while_its_events_are_read(tmp_path: Path) -> None:
    """The host reads the guest's events while it is still writing a command far bigger than a pipe holds: with a
    write that waited for the guest to read everything first, host and guest would wait for each other forever."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", GUEST, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        session = GuestSession(SandboxMachine("pipes", tmp_path, proc))  # its send and events, over plain pipes
        lines: list[str] = []
        message = {"argv": ["true"], "write": {"big": "b" * (1 << 20)}}
        code, files = await session.command(message, lambda stream, text: lines.append(text))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert code == 0 and len(lines) == 20000 and lines[-1].startswith("event 19999 ")
    assert int(files["size"]) > 1 << 20
