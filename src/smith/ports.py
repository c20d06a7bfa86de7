"""Small Protocols the services depend on; adapters implement them, ``smith.testing`` fakes them.

Each service's own ports are added here as the service lands (VMM and Network for the agent, BlobStore for
the cache, LogSink for the logs pipeline).
"""

from __future__ import annotations

from typing import Protocol

from smith.domain.jobs import Job
from smith.wire.agent import RunnerCredential


class RunnerCredentials(Protocol):
    """Mints what an ephemeral GitHub runner needs to register for one job (GitHub App, or a fake)."""

    async def for_job(self, job: Job, runner_name: str) -> RunnerCredential: ...

    async def aclose(self) -> None: ...
