"""smith.asyncutil.supervise: a loop that fails runs again; a fatal error ends the process; cancel stops it."""

from __future__ import annotations

import asyncio

import pytest

from smith.asyncutil import EXIT_FATAL, supervise


async def test_an_unexpected_error_starts_the_loop_again() -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise KeyError("an answer of the wrong shape")

    await asyncio.wait_for(supervise("test", loop, first_delay=0.001), 30)
    assert runs == [0, 1, 2]


async def test_a_fatal_error_exits_the_process() -> None:
    codes: list[int] = []

    async def loop() -> None:
        raise MemoryError

    with pytest.raises(MemoryError):
        await supervise("test", loop, exit=codes.append)
    assert codes == [EXIT_FATAL]


async def test_cancel_stops_it() -> None:
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("test", loop))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
