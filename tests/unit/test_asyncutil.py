"""smith.asyncutil: ``supervise`` (a loop that fails runs again; a fatal error ends the process; cancel stops it)
and ``ready_batches`` (what is already read comes together, in order, errors after the items before them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from smith.asyncutil import EXIT_FATAL, ready_batches, stop_task, supervise


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


async def swallows_one_cancel(swallowed: list[int]) -> None:
    """What a client library that eats a cancellation does: the caller's loop goes on as if nothing happened."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        swallowed.append(1)


async def test_stop_task_ends_a_loop_that_swallowed_a_cancellation() -> None:
    swallowed: list[int] = []
    rounds = asyncio.Event()

    async def loop() -> None:
        await swallows_one_cancel(swallowed)
        while True:  # the reaper's shape: sleep, work, again
            rounds.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(supervise("test", loop))
    await asyncio.sleep(0.01)
    task.cancel()  # what a plain cancel-and-await did: the loop runs on
    await asyncio.wait_for(rounds.wait(), 5)
    assert swallowed == [1] and not task.done()
    assert await stop_task(task, seconds=5)
    assert task.cancelled()


async def test_stop_task_gives_up_on_a_task_that_never_ends() -> None:
    give_in = asyncio.Event()

    async def stubborn() -> None:
        while not give_in.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert not await stop_task(task, seconds=0.2)
    assert not task.done()
    give_in.set()
    assert await stop_task(task, seconds=5)


async def test_ready_batches_groups_what_is_already_there_in_order() -> None:
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        for i in range(5):
            yield i
        await gate.wait()  # the next items come later
        for i in range(5, 8):
            yield i

    got: list[list[int]] = []

    async def consume() -> None:
        async for batch in ready_batches(source(), max_items=3):
            got.append(batch)
            if batch[-1] == 4:  # the items before the wait came without waiting for the later ones
                gate.set()

    await asyncio.wait_for(consume(), 30)
    assert [x for b in got for x in b] == list(range(8))
    assert got[0] == [0, 1, 2] and all(1 <= len(b) <= 3 for b in got)  # at most max_items a batch


async def test_ready_batches_raises_the_source_error_after_its_items() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("pipe broke")

    seen: list[int] = []
    with pytest.raises(OSError, match="pipe broke"):
        async for batch in ready_batches(source()):
            seen += batch
    assert seen == [1, 2]
