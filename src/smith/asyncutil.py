"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from smith.logging import get_logger

log = get_logger("smith.cleanup")


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
