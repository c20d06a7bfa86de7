"""The guest's serial console (Firecracker's stdout), read from the moment the process starts.

Firecracker makes its stdout non-blocking and drops whatever does not fit in the pipe: a console nobody reads
(a warm VM waiting for its job, or a job printing faster than the reader takes it) loses bytes, torn lines and
possibly the job's exit event. So a thread of its own drains the pipe with blocking reads from process start
and hands each chunk to the event loop (``call_soon_threadsafe``: unbounded by count, each chunk at most a pipe's
worth), so a loop that is busy or blocked for a while cannot make Firecracker drop bytes; the pipe is enlarged
(``F_SETPIPE_SZ``, up to ``/proc/sys/fs/pipe-max-size``) to ride out a thread that is not scheduled at once.

Lines are sorted as they come: the guest agent's ``{"smith": "ready"}`` sets :attr:`ready`; GuestEvent JSON
goes to the queue as events; anything else (the kernel's messages) as ``system`` lines; the last few lines are
kept for error messages (:meth:`tail`). A line longer than ``MAX_LINE`` is console noise and is dropped.

Guest events may also come over a channel of their own (vsock, :mod:`.events`): :meth:`open_channel` /
:meth:`channel_line` / :meth:`close_channel`. While one is open, JSON on the console is a ``system`` line, not an
event (a job running as root can write to /dev/ttyS0; it cannot take the agent's channel). The events end after
the exit event, or once the console and every channel have closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import select
import threading
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
    return Console(read_fd, on_event)


class Console:
    def __init__(self, read_fd: int, on_event: Callable[[GuestEvent], None] | None = None) -> None:
        self.fd = read_fd
        self.on_event = on_event
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()
        self._queue: asyncio.Queue[GuestEvent | None] = asyncio.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._pending = b""
        self._sources = 1  # the console, plus each open channel: the events end when all have closed
        self._channels = 0
        self.over_channel = False  # guest events have come over a channel (vsock) rather than the console
        self.on_console = asyncio.Event()  # guest events have come on the console: the guest has no channel
        self._loop = asyncio.get_running_loop()
        self._stop_r, self._stop_w = os.pipe()  # wakes the reader when the console is closed before EOF
        self._reader = threading.Thread(target=self._read, name=f"console-{read_fd}", daemon=True)
        self._reader.start()

    def tail(self) -> str:
        return "\n".join(self._tail)

    def _read(self) -> None:
        """The reader thread: blocking reads until EOF or close(), each chunk handed to the loop."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                chunk = os.read(self.fd, PIPE_SIZE)
                if not chunk:
                    return
                self._loop.call_soon_threadsafe(self._feed, chunk)
        except OSError:
            return
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is left to tell
                self._loop.call_soon_threadsafe(self._eof)

    def _feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        if len(self._pending) > MAX_LINE:
            self._pending = b""  # an over-long line: console noise, dropped
        for raw in lines:
            self._line(raw)

    def _eof(self) -> None:
        if self.closed.is_set():
            return
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        self.closed.set()
        self._source_done()

    def _source_done(self) -> None:
        self._sources -= 1
        if self._sources == 0:
            self._queue.put_nowait(None)

    def open_channel(self) -> None:
        """A channel carrying guest events (the guest agent's vsock connection) opened."""
        self._sources += 1
        self._channels += 1
        self.over_channel = True

    def channel_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip("\r")
        event = _guest_event(text)
        if event is None:
            self._system(text)
        else:
            self._event(event)

    def close_channel(self) -> None:
        self._channels -= 1
        self._source_done()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip("\r")
        if READY in raw:
            self.ready.set()
            return
        event = _guest_event(text) if not self._channels else None
        if event is None:
            self._system(text)
        else:
            self.on_console.set()
            self._event(event)

    def _system(self, text: str) -> None:
        if not text.strip():
            return
        self._tail.append(text)
        self._queue.put_nowait(GuestEvent(type="line", ts=time.time(), stream="system", line=text))

    def _event(self, event: GuestEvent) -> None:
        if self.on_event is not None:
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
        """Stop the reader (what it read is still handed over) and close the pipe."""
        if self._stop_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            await asyncio.to_thread(self._reader.join)
            for fd in (self.fd, self._stop_r, self._stop_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._stop_w = -1
        self._eof()


def _guest_event(text: str) -> GuestEvent | None:
    if not text.startswith("{"):
        return None
    try:
        return GuestEvent.model_validate(orjson.loads(text))
    except (orjson.JSONDecodeError, ValidationError):
        return None
