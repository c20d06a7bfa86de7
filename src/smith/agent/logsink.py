"""Where a job's output lines go on the host: a local NDJSON file per job, and the log pipeline when set."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import IO, Protocol

from smith.agent.private import open_private, private_dir
from smith.logging import get_logger
from smith.wire.guest import GuestEvent

log = get_logger("smith.agent.logsink")


class JobOutput(Protocol):
    async def start(self) -> None: ...

    async def start_job(self, job_id: str, logs_token: str | None) -> None:
        """A job begins; ``logs_token`` (from its lease) is what may write its lines to the log pipeline."""
        ...

    async def emit(self, job_id: str, event: GuestEvent) -> None: ...

    async def emit_many(self, job_id: str, events: list[GuestEvent]) -> None:
        """``emit`` each, in order (an output may make them durable together)."""
        ...

    async def follow_files(self, job_id: str, files: dict[str, Path]) -> None:
        """Also forward these host files about the job's VM (step name -> path) until ``close_job``."""
        ...

    async def close_job(self, job_id: str) -> None: ...

    async def aclose(self) -> None: ...


class LocalFiles:
    """``<dir>/<job_id>.ndjson``: every guest event of a job, one JSON object a line, in order (dir 0700, files
    0600: a job's output is nobody else's to read).

    Bounded: a job's file stops at ``max_job_bytes`` (one marker line says so; its exit event is still kept),
    and the oldest closed files are removed while the directory holds more than ``max_total_bytes``. A full
    disk never fails a job or the agent: the lines that do not fit are dropped, with one warning per job."""

    def __init__(self, directory: Path, *, max_job_bytes: int = 64 << 20, max_total_bytes: int = 1 << 30) -> None:
        self.dir = private_dir(directory)
        self.max_job_bytes = max_job_bytes
        self.max_total_bytes = max_total_bytes
        self._files: dict[str, IO[str]] = {}
        self._written: dict[str, int] = {}
        self._dropping: set[str] = set()  # jobs whose file is full (cap or disk): only the exit event goes in

    async def start(self) -> None:
        await asyncio.to_thread(self.rotate)

    async def start_job(self, job_id: str, logs_token: str | None) -> None:
        return None

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id.replace('/', '_')}.ndjson"

    async def emit(self, job_id: str, event: GuestEvent) -> None:
        line = event.model_dump_json() + "\n"
        if job_id in self._dropping and event.type != "exit":
            return
        written = self._written.get(job_id, 0)
        if written + len(line) > self.max_job_bytes and event.type != "exit":
            self._dropping.add(job_id)
            note = GuestEvent(
                type="line",
                ts=event.ts,
                stream="system",
                line=f"[smith] this host keeps at most {self.max_job_bytes} bytes of a job's log; the rest is not here",
            )
            line = note.model_dump_json() + "\n"
        try:
            f = self._files.get(job_id)
            if f is None:
                f = self._files[job_id] = open_private(self.path(job_id), "a", encoding="utf-8")
            f.write(line)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO: the job goes on; its local copy stops here
            if job_id not in self._dropping:
                log.warning("job log not written on this host", job_id=job_id, error=str(exc))
            self._dropping.add(job_id)
            return
        self._written[job_id] = written + len(line)

    async def emit_many(self, job_id: str, events: list[GuestEvent]) -> None:
        for event in events:
            await self.emit(job_id, event)

    async def follow_files(self, job_id: str, files: dict[str, Path]) -> None:
        return None  # the VMM's files stay in the VM's directory until it is destroyed

    async def close_job(self, job_id: str) -> None:
        f = self._files.pop(job_id, None)
        self._written.pop(job_id, None)
        self._dropping.discard(job_id)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        await asyncio.to_thread(self.rotate)

    def rotate(self) -> list[Path]:
        """Remove the oldest closed job logs until the directory fits in ``max_total_bytes``."""
        open_now = {self.path(job_id) for job_id in self._files}
        files = []
        for path in self.dir.glob("*.ndjson"):
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = []
        for _, size, path in sorted(files):
            if total <= self.max_total_bytes:
                break
            if path in open_now:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                removed.append(path)
        return removed

    async def aclose(self) -> None:
        for job_id in list(self._files):
            await self.close_job(job_id)


class Fanout:
    """Send every event to several outputs (local files and the log pipeline)."""

    def __init__(self, *outputs: JobOutput) -> None:
        self.outputs = outputs

    async def start(self) -> None:
        for out in self.outputs:
            await out.start()

    async def start_job(self, job_id: str, logs_token: str | None) -> None:
        for out in self.outputs:
            await out.start_job(job_id, logs_token)

    async def emit(self, job_id: str, event: GuestEvent) -> None:
        for out in self.outputs:
            await out.emit(job_id, event)

    async def emit_many(self, job_id: str, events: list[GuestEvent]) -> None:
        for out in self.outputs:
            await out.emit_many(job_id, events)

    async def follow_files(self, job_id: str, files: dict[str, Path]) -> None:
        for out in self.outputs:
            await out.follow_files(job_id, files)

    async def close_job(self, job_id: str) -> None:
        for out in self.outputs:
            await out.close_job(job_id)

    async def aclose(self) -> None:
        for out in self.outputs:
            await out.aclose()
