"""Where a job's output lines go on the host: a local NDJSON file per job, and the log pipeline when set."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from smith.agent.private import open_private, private_dir
from smith.wire.guest import GuestEvent


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
    0600: a job's output is nobody else's to read)."""

    def __init__(self, directory: Path) -> None:
        self.dir = private_dir(directory)
        self._files: dict[str, object] = {}

    async def start(self) -> None:
        return None

    async def start_job(self, job_id: str, logs_token: str | None) -> None:
        return None

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id.replace('/', '_')}.ndjson"

    async def emit(self, job_id: str, event: GuestEvent) -> None:
        f = self._files.get(job_id)
        if f is None:
            f = self._files[job_id] = open_private(self.path(job_id), "a", encoding="utf-8")
        f.write(event.model_dump_json() + "\n")  # type: ignore[attr-defined]

    async def emit_many(self, job_id: str, events: list[GuestEvent]) -> None:
        for event in events:
            await self.emit(job_id, event)

    async def follow_files(self, job_id: str, files: dict[str, Path]) -> None:
        return None  # the VMM's files stay in the VM's directory until it is destroyed

    async def close_job(self, job_id: str) -> None:
        f = self._files.pop(job_id, None)
        if f is not None:
            f.close()  # type: ignore[attr-defined]

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
