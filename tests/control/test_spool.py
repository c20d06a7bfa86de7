"""The webhook spool: whole files only, replayed oldest first, stopped by an outage, bad files kept aside."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from smith.control.spool import Spool
from smith.errors import InvalidInput, Unavailable


async def test_replay_in_order_and_stop_while_down(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        await spool.put("workflow_job", f"d{i}", {"n": i})
    assert len(spool) == 5
    seen: list[str] = []
    down_after = 2

    async def handle(event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any]:
        if len(seen) == down_after:
            raise Unavailable("redis down")
        seen.append(delivery)
        return {}

    assert await spool.replay(handle) == 2
    assert seen == ["d0", "d1"] and len(spool) == 3
    down_after = 99
    assert await spool.replay(handle) == 3
    assert seen == ["d0", "d1", "d2", "d3", "d4"] and len(spool) == 0
    assert not list(tmp_path.glob(".*.tmp"))


async def test_bad_files_are_kept_aside_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "00000000000000000001-torn.json").write_text('{"event": ')
    await spool.put("workflow_job", "rejected", {})
    await spool.put("workflow_job", "fine", {})

    async def handle(event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any]:
        if delivery == "rejected":
            raise InvalidInput("nope")
        return {}

    assert await spool.replay(handle) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".bad", ".bad"]


async def test_the_fsyncs_run_off_the_event_loop(tmp_path: Path) -> None:
    in_fsync, release = threading.Event(), threading.Event()

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        assert release.wait(30)

    spool = Spool(tmp_path, fsync=slow_fsync)
    put = asyncio.create_task(spool.put("workflow_job", "d1", {}))
    await asyncio.to_thread(in_fsync.wait, 30)
    ran = asyncio.Event()

    async def other() -> None:  # another coroutine: it runs while the spool's fsync is in progress
        ran.set()

    await asyncio.wait_for(asyncio.create_task(other()), 30)
    assert ran.is_set() and not put.done()
    release.set()
    path = await put
    assert path.exists() and spool.count == 1
