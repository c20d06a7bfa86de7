"""A disk spool for webhook deliveries that arrive while Redis is down.

GitHub does not retry a failed delivery by itself, so answering 503 would lose the job. Instead the verified
delivery is written to ``<data dir>/control/spool/`` (write to a temp file, fsync, rename: a file is there whole or
not at all; done in a worker thread, so the event loop serves other requests meanwhile), GitHub gets 202, and a
background task replays the files in arrival order once Redis answers again. Replays go through the same delivery-id
dedupe, so a file replayed twice records once.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from smith.errors import SmithError, Unavailable
from smith.logging import get_logger

log = get_logger("smith.control.spool")

Handler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Spool:
    def __init__(self, directory: Path, max_files: int = 100_000, *, fsync: Callable[[int], None] = os.fsync) -> None:
        self.dir = directory
        self.max_files = max_files
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.count = 0  # files in the spool after the last put

    def __len__(self) -> int:
        return sum(1 for p in self.dir.glob("*.json"))

    async def put(self, event: str, delivery: str, payload: dict[str, Any]) -> Path:
        """Write one delivery, whole, to disk. The write, its fsyncs and the count of spooled files run in a
        worker thread: a slow disk holds this delivery only, not every request the event loop serves."""
        return await asyncio.to_thread(self._put, event, delivery, payload)

    def _put(self, event: str, delivery: str, payload: dict[str, Any]) -> Path:
        count = len(self)
        if count >= self.max_files:
            raise Unavailable("webhook spool is full and Redis is down", retry_after=30)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.dir / f".{name}.tmp"
        data = orjson.dumps({"event": event, "delivery": delivery, "payload": payload})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            self._fsync(fd)
        finally:
            os.close(fd)
        final = self.dir / name
        os.rename(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            self._fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.count = count + 1
        return final

    async def replay(self, handle: Handler) -> int:
        """Hand spooled deliveries to ``handle`` oldest first; stop at the first that Redis cannot take."""
        done = 0
        for path in sorted(self.dir.glob("*.json")):
            try:
                item = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                log.error("unreadable spool file moved aside", file=path.name, error=str(exc))
                path.rename(path.with_suffix(".bad"))
                continue
            try:
                await handle(item["event"], item["delivery"], item["payload"])
            except Unavailable:
                break
            except SmithError as exc:  # a delivery that can never be recorded: keep it for a human
                log.error("spooled delivery rejected", file=path.name, error=exc.message)
                path.rename(path.with_suffix(".bad"))
                continue
            path.unlink()
            done += 1
        if done:
            log.info("replayed spooled webhook deliveries", count=done)
        return done
