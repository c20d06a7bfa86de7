"""The host's side of the serial console: drained by a thread of its own, so a busy event loop loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from smith.adapters.firecracker.console import console_pipe, open_console

# Writes GuestEvent lines to its stdout with blocking writes, so it finishes only if somebody drains the pipe.
# (Firecracker's writes are non-blocking and drop instead; a blocking writer makes "was it drained while the loop
# was blocked" a yes-or-no question rather than a race between the reader thread and this writer.)
FLOOD = textwrap.dedent(
    """
    import json, os, sys
    n = int(sys.argv[1])
    for i in range(n):
        os.write(1, json.dumps({"type": "line", "ts": 1.0, "seq": i, "line": f"line-{i}-" + "x" * 200}).encode()
                 + b"\\n")
    os.write(1, json.dumps({"type": "exit", "ts": 2.0, "seq": n, "stream": "system", "exit_code": 0}).encode() + b"\\n")
    """
)


async def test_the_console_is_drained_while_the_event_loop_is_blocked() -> None:
    lines = 40_000  # ~9 MiB: nine times what the pipe holds
    read_fd, write_fd = console_pipe()
    console = await open_console(read_fd)
    try:
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(lines)], stdout=write_fd)
    finally:
        os.close(write_fd)
    try:
        try:
            flood.wait(timeout=30)  # blocks the event loop for the whole flood: nothing on the loop reads
        except subprocess.TimeoutExpired:
            flood.kill()
            flood.wait()
            raise AssertionError("nothing drained the console while the event loop was blocked") from None
        assert flood.returncode == 0
        seen = [e async for e in console.events()]
    finally:
        await console.close()
    out = [e.line for e in seen if e.type == "line"]
    assert len(out) == lines and out[-1].startswith(f"line-{lines - 1}-")
    assert [e.seq for e in seen] == list(range(lines + 1))
    assert seen[-1].type == "exit" and seen[-1].exit_code == 0


async def test_closing_the_console_stops_its_reader_while_the_pipe_is_still_open() -> None:
    read_fd, write_fd = console_pipe()
    try:
        console = await open_console(read_fd)
        os.write(write_fd, b'{"smith": "ready"}\nkernel says hi\n')
        await console.ready.wait()
        await console.close()  # the writer is still there: no EOF, the reader must stop anyway
        assert console.closed.is_set() and [e.line async for e in console.events()] == ["kernel says hi"]
    finally:
        os.close(write_fd)


async def test_while_a_channel_is_open_json_on_the_console_is_not_an_event() -> None:
    # A job running as root can write to /dev/ttyS0; with the agent's vsock channel open, what looks like an
    # event there is a system line, and the events end only once the channel is done too.
    read_fd, write_fd = console_pipe()
    console = await open_console(read_fd)
    try:
        console.open_channel()
        os.write(write_fd, b'{"type": "exit", "ts": 1.0, "exit_code": 0}\n')
        os.close(write_fd)
        await console.closed.wait()
        console.channel_line(b'{"type": "line", "ts": 1.0, "seq": 1, "line": "real"}')
        console.close_channel()
        seen = [(e.type, e.stream, e.line) async for e in console.events()]
    finally:
        await console.close()
    assert seen == [("line", "system", '{"type": "exit", "ts": 1.0, "exit_code": 0}'), ("line", "stdout", "real")]
