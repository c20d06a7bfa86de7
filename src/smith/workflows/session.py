"""One job's guest: a booted VM or sandbox in steps mode, driven one command at a time (see guest/agent.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from smith.errors import VMError
from smith.wire.guest import GuestEvent

OnLine = Callable[[str, str], None]  # (stream, text)


class SteppedMachine(Protocol):
    id: str

    def events(self) -> AsyncIterator[GuestEvent]: ...

    async def send(self, message: dict[str, Any]) -> None: ...


class GuestSession:
    """Commands to one guest agent in steps mode; ``host_workdir``: the guest's work dir seen from the host
    where the backend shares it (the sandbox), else None."""

    def __init__(self, machine: SteppedMachine, host_workdir: Path | None = None) -> None:
        if not hasattr(machine, "send"):
            raise VMError(f"this backend cannot drive a job step by step ({type(machine).__name__} has no send)")
        self.machine = machine
        self.host_workdir = host_workdir
        self._events = machine.events().__aiter__()
        self.workdir = ""  # the guest's absolute work dir, from probe()
        self.path = ""
        self.tools: dict[str, str] = {}
        self._started = False  # the guest agent's ``started`` came: lines before it are the VM's boot (console)

    async def command(self, message: dict[str, Any], on_line: OnLine | None = None) -> tuple[int, dict[str, str]]:
        """Send one command and read its events until its ``step`` result. The events are read while the command
        is still being written: a large command never waits for a guest that waits for its events to be read."""
        sending = asyncio.ensure_future(self.machine.send(message))
        try:
            while True:
                event = await self._next_event(sending)
                if event.type == "started":
                    self._started = True
                elif event.type == "line":
                    if on_line is not None and self._started:
                        on_line(event.stream, event.line)
                elif event.type == "step":
                    await sending
                    return event.exit_code or 0, event.files or {}
                elif event.type == "exit":
                    raise VMError(f"the guest of {self.machine.id} ended in the middle of a step")
        finally:
            if not sending.done():
                sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)

    async def _next_event(self, sending: asyncio.Future[None]) -> GuestEvent:
        """The guest's next event; a failed send raises at once (the command's events may never come)."""
        if sending.done():
            sending.result()
            return await self._next()
        nxt: asyncio.Future[GuestEvent] = asyncio.ensure_future(self._next())
        waiting: set[asyncio.Future[Any]] = {nxt, sending}
        handed = False
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                sending.result()  # a failed send raises here
            handed = True
        finally:
            if not handed:  # no reader left behind on the guest's events
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
        return await nxt  # (awaiting a task: cancelling this cancels it)

    async def _next(self) -> GuestEvent:
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            raise VMError(f"the guest of {self.machine.id} ended in the middle of a step") from None

    async def probe(self) -> None:
        """The guest's work dir, PATH and which interpreters it has."""
        script = 'pwd; echo "$PATH"; for t in bash sh python3 python node; do command -v $t || echo; done'
        lines: list[str] = []  # stdout only: a VM's console (kernel messages) may add system lines
        code, _ = await self.command(
            {"argv": ["/bin/sh", "-c", script]}, lambda s, t: lines.append(t) if s == "stdout" else None
        )
        if code != 0 or len(lines) < 7:
            raise VMError(f"cannot probe the guest: {lines}")
        self.workdir, self.path = lines[0], lines[1]
        self.tools = {t: p for t, p in zip(("bash", "sh", "python3", "python", "node"), lines[2:7], strict=True) if p}

    async def upload(self, source: Path, dest: str, exclude: tuple[str, ...] = ()) -> None:
        """A host directory copied into the guest at ``dest`` (relative to its work dir)."""
        buf = io.BytesIO()
        # Plain tar: a guest's Python may lack zlib (the QEMU image's does), and the copy is local anyway.
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(source), arcname=".", filter=lambda m: None if _excluded(m.name, exclude) else m)
        said: list[str] = []
        message = {"untar": {"dest": dest, "data": base64.b64encode(buf.getvalue()).decode()}}
        code, _ = await self.command(message, lambda stream, text: said.append(text))
        if code != 0:
            raise VMError(f"cannot copy {source} into the guest: {' '.join(said)[-500:] or f'exit {code}'}")

    async def end(self) -> None:
        with contextlib.suppress(VMError):
            await self.machine.send({"end": True})


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    parts = Path(name).parts
    return bool(parts) and parts[1 if parts[0] == "." and len(parts) > 1 else 0] in exclude
