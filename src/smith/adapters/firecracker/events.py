"""Guest events over vsock: the host end of the guest agent's event channel.

Firecracker's vsock device is "hybrid": no vhost-vsock on the host. A connection the guest makes to CID 2 (the
host), port ``EVENTS_PORT``, is forwarded by Firecracker to the Unix socket ``<uds_path>_<port>`` on the host,
which something must be listening on (inside the chroot when jailed). This listens there before InstanceStart and
hands each line to the :class:`~.console.Console`, so events and the console's kernel lines come out of one
``events()``. A stream socket is flow-controlled end to end (the guest's sender waits while the host does not
read), so unlike the serial console nothing is dropped. One channel per VM: the first connection (the guest
agent's, made before its job starts) is taken; later ones are closed at once.

The connection is a stream both ways: in steps mode (workflow jobs) the host writes its commands back on it
(:meth:`EventListener.send`), one JSON line each, and the guest agent reads them between steps. Reading never
waits for sending: lines are read by this connection's own task into the console's unbounded queue, so a guest
flooding output while the host waits to send (the guest reads commands only between steps) cannot deadlock
the two ends; a guest that reads nothing holds up only :meth:`send` (flow control), never the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from smith.adapters.firecracker.console import MAX_LINE, Console

EVENTS_PORT = 1024  # the guest agent's EVENTS_PORT (smith/guest/agent.py)


def events_socket(uds_path: Path, port: int = EVENTS_PORT) -> Path:
    """Where Firecracker forwards the guest's connections to ``port``: ``<uds_path>_<port>``."""
    return uds_path.with_name(f"{uds_path.name}_{port}")


class EventListener:
    def __init__(self, path: Path, console: Console) -> None:
        self.path = path
        self.console = console
        self._server: asyncio.base_events.Server | None = None
        self._taken = False
        self._writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()  # the guest agent's connection came (and is this listener's channel)
        self.ended = asyncio.Event()  # ... and has ended

    async def start(self, owner: tuple[int, int] | None = None) -> None:
        """Listen; ``owner`` (uid, gid): the jailed Firecracker's user, which must be able to connect."""
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o600)
        if owner is not None and os.geteuid() == 0:
            os.chown(self.path, *owner)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._taken:
            writer.close()
            return
        self._taken = True
        self._writer = writer
        self.console.open_channel()
        self.connected.set()
        try:
            while line := await reader.readline():
                self.console.channel_line(line.rstrip(b"\n"))
        except (ValueError, ConnectionError):
            pass  # an over-long line or a reset: the channel ends here
        finally:
            self.ended.set()
            self.console.close_channel()
            writer.close()  # the guest waits for this end's close: then it knows everything arrived

    async def send(self, data: bytes) -> None:
        """Write to the guest on its connection (steps mode); waits while the guest does not read (flow control).
        ``ConnectionError`` when there is no connection or it has ended."""
        writer = self._writer
        if writer is None or self.ended.is_set() or writer.is_closing():
            raise ConnectionResetError("the guest's channel is closed")
        writer.write(data)
        await writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # its reader sees the end and closes the channel
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
        self.path.unlink(missing_ok=True)
