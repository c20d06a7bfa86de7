"""The log spool's promise: a line is on disk when ``send()`` returns, and concurrent sends share one sync."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import orjson

from smith.agent.logship import LogShipper
from smith.testing.servers import free_port
from tests.logs.test_logship import line


def test_sent_lines_survive_the_process_dying_at_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import asyncio, os, time
        from smith.agent.logship import LogShipper
        from smith.wire.guest import GuestEvent

        async def main():
            shipper = LogShipper("http://127.0.0.1:{free_port()}", "t", {str(spool)!r})
            for i in range(1, 101):
                await shipper.send("job-1", GuestEvent(type="line", ts=time.time(), stream="stdout", line=f"l {{i}}"))
            os._exit(0)

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    lines = [orjson.loads(x) for x in (spool / "job-1" / "lines.ndjson").read_bytes().splitlines()]
    assert [x["line"] for x in lines] == [f"l {i}" for i in range(1, 101)]
    assert [x["seq"] for x in lines] == list(range(1, 101))


async def test_send_returns_after_a_sync_covering_its_line(tmp_path: Path) -> None:
    synced: list[int] = []  # the file's size at each sync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)

    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "t", tmp_path, fsync=fsync)
    path = tmp_path / "job-1" / "lines.ndjson"
    for i in range(20):
        await shipper.send("job-1", line(f"l {i}"))
        assert synced and synced[-1] == path.stat().st_size
    assert len(synced) == 20
    await shipper.close(drain_seconds=0)


async def test_concurrent_sends_share_one_sync_and_the_loop_runs_meanwhile(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        started.set()
        assert release.wait(30)

    shipper = LogShipper(f"http://127.0.0.1:{free_port()}", "t", tmp_path, fsync=slow_fsync)
    first = asyncio.create_task(shipper.send("job-1", line("first")))
    await asyncio.to_thread(started.wait, 30)  # the first sync is in progress in a worker thread...
    others = [asyncio.create_task(shipper.send(f"job-{i % 3}", line(f"l {i}"))) for i in range(30)]
    await asyncio.sleep(0)  # ...and the event loop still runs: the other sends are spooled meanwhile
    assert not first.done() and all(not t.done() for t in others)
    assert shipper._appended == 31
    release.set()
    await asyncio.gather(first, *others)
    assert len(calls) == 1 + 3  # one sync for the first line, then one round for the 30 others (3 job files)
    await shipper.close(drain_seconds=0)
