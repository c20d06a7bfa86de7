"""The guest's serial console (Firecracker's stdout), read from the moment the process starts.

Firecracker makes its stdout non-blocking and drops whatever does not fit in the pipe: a console nobody reads
(a warm VM waiting for its job, or a job printing faster than the reader takes it) loses bytes, torn lines and
possibly the job's exit event. So a task drains it continuously into a queue from process start, and the pipe
is enlarged (``F_SETPIPE_SZ``, up to ``/proc/sys/fs/pipe-max-size``) to ride out a slow reader.

Lines are sorted as they come: the guest agent's ``{"smith": "ready"}`` sets :attr:`ready`; GuestEvent JSON
goes to the queue as events; anything else (the kernel's messages) as ``system`` lines; the last few lines are
kept for error messages (:meth:`tail`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable

import orjson
from pydantic import ValidationError

from smith.wire.guest import GuestEvent

MAX_LINE = 1 << 20  # the guest agent cuts its lines at 64 KiB (plus JSON framing); longer is console noise
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
READY = b'"smith": "ready"'


def console_pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    """A pipe for Firecracker's stdout, its buffer enlarged (best effort: an unprivileged process may go up to
    /proc/sys/fs/pipe-max-size, 1 MiB by default). Returns (read end, write end)."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, size)
    return read_fd, write_fd


async def open_console(read_fd: int, on_event: Callable[[GuestEvent], None] | None = None) -> Console:
    """The console reading ``read_fd`` (taken over: closed with the console)."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    return Console(reader, on_event, transport)


class Console:
    def __init__(
        self,
        stream: asyncio.StreamReader,
        on_event: Callable[[GuestEvent], None] | None = None,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.on_event = on_event
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()
        self._queue: asyncio.Queue[GuestEvent | None] = asyncio.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self.task = asyncio.create_task(self._drain())

    def tail(self) -> str:
        return "\n".join(self._tail)

    async def _drain(self) -> None:
        pending = b""
        try:
            while chunk := await self.stream.read(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE:
                    pending = b""  # an over-long line: console noise, dropped
                for raw in lines:
                    self._line(raw)
            if pending:
                self._line(pending)
        finally:
            self.closed.set()
            self._queue.put_nowait(None)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip("\r")
        if READY in raw:
            self.ready.set()
            return
        event = _guest_event(text)
        if event is None:
            if not text.strip():
                return
            self._tail.append(text)
            event = GuestEvent(type="line", ts=time.time(), stream="system", line=text)
        elif self.on_event is not None:
            self.on_event(event)
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[GuestEvent]:
        """Everything read so far and then as it comes; ends after the exit event or when the console closes."""
        while True:
            event = await self._queue.get()
            if event is None:
                self._queue.put_nowait(None)  # a later reader ends too
                return
            yield event
            if event.type == "exit":
                return

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.transport is not None:
            self.transport.close()


def _guest_event(text: str) -> GuestEvent | None:
    if not text.startswith("{"):
        return None
    try:
        return GuestEvent.model_validate(orjson.loads(text))
    except (orjson.JSONDecodeError, ValidationError):
        return None
