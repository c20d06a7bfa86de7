"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from smith.logging import get_logger

T = TypeVar("T")
log = get_logger("smith.cleanup")
supervisor_log = get_logger("smith.supervise")

# Errors after which this process cannot be trusted to go on: it exits so that its own supervisor (systemd,
# Kubernetes, `smith dev`) starts a whole new one, rather than run half alive.
FATAL_ERRORS: tuple[type[BaseException], ...] = (MemoryError, SystemError)
EXIT_FATAL = 70  # EX_SOFTWARE


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    first_delay: float = 1.0,
    max_delay: float = 60.0,
    exit: Callable[[int], object] = os._exit,
) -> None:
    """Run the long-running ``loop()`` until it returns or is cancelled, starting it again whenever it fails.

    An unexpected error is logged with its type and traceback, and the loop starts again after a capped
    exponential back-off with jitter (``first_delay`` doubling up to ``max_delay``, each wait 50-100% of that;
    back to ``first_delay`` once a run lasted ``max_delay``). An error in ``FATAL_ERRORS`` ends the process with
    status 70 instead (through ``exit``), so its supervisor restarts it: never a process with a dead loop.
    """
    delay = first_delay
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except FATAL_ERRORS as exc:
            supervisor_log.critical(
                "background loop hit a fatal error; exiting so the process is restarted",
                loop=name,
                error_type=type(exc).__name__,
                error=str(exc),
            )
            exit(EXIT_FATAL)
            raise
        except Exception as exc:
            if time.monotonic() - started >= max_delay:
                delay = first_delay
            wait = delay * random.uniform(0.5, 1.0)
            supervisor_log.error(
                "background loop failed; starting it again",
                loop=name,
                error_type=type(exc).__name__,
                error=str(exc),
                retry_in=round(wait, 3),
                exc_info=exc,
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, max_delay)


async def stop_task(task: asyncio.Task[object] | asyncio.Task[None], seconds: float = 5.0) -> bool:
    """Cancel ``task`` and wait until it has ended, cancelling it again every 50 ms: a library that swallows one
    cancellation (seen with redis-py's client between a command and its connection's release) would otherwise
    leave a loop running on, and its owner waiting forever. True if it ended within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=max(0.0, min(0.05, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: an error it ended with was logged by its supervisor
    return task.done()


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation that arrives just as the event is set is never
    swallowed, so a loop built on this stops when its task is cancelled.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()


async def ready_batches(source: AsyncIterator[T], max_items: int = 256) -> AsyncGenerator[list[T], None]:
    """The items of ``source`` in lists: each list holds the next item and every one already read after it (a task
    reads ahead, at most ``max_items``), so that a consumer pays once for many, e.g. one fsync for many lines. An
    error of ``source`` is raised after the items before it."""
    queue: asyncio.Queue[tuple[bool, T | Exception | None]] = asyncio.Queue(max_items)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put((True, item))
        except Exception as exc:
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    task = asyncio.create_task(pump())
    try:
        while True:
            ok, item = await queue.get()
            batch: list[T] = []
            while ok:
                batch.append(item)  # type: ignore[arg-type]
                if queue.empty() or len(batch) >= max_items:
                    break
                ok, item = queue.get_nowait()
            if batch:
                yield batch
            if not ok:
                if isinstance(item, Exception):
                    raise item
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class CleanupStack:
    """Undo actions for what a VM boot made, run newest first; every one runs even if an earlier one fails."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner  # named in the log line of a failed step
        self._undo: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    def push(self, name: str, undo: Callable[[], Awaitable[None]]) -> None:
        self._undo.append((name, undo))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._undo]

    async def unwind(self) -> None:
        while self._undo:
            name, undo = self._undo.pop()
            try:
                await undo()
            except Exception as exc:  # keep unwinding: one stuck resource must not leak the others
                log.error("cleanup step failed", owner=self.owner, step=name, error=str(exc))
