"""Small Protocols the services depend on; adapters implement them, ``smith.testing`` fakes them.

Each service's own ports are added here as the service lands (VMM and Network for the agent, BlobStore for
the cache, ClickHouse for the logs pipeline; the log store itself is ``smith.logs.store.LogStore``, one class
over either ClickHouse adapter). Where the agent sends a job's output is the agent's own ``JobOutput``
(``smith.agent.logsink``: local files, the log shipper, or both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from smith.domain.cache import RunOrigin
from smith.domain.jobs import Job
from smith.domain.vms import Backend, Slot, VMShape
from smith.wire.agent import RunnerCredential
from smith.wire.guest import GuestConfig, GuestEvent


class RunnerCredentials(Protocol):
    """Mints what an ephemeral GitHub runner needs to register for one job (GitHub App, or a fake)."""

    async def for_job(self, job: Job, runner_name: str) -> RunnerCredential: ...

    async def release(self, job: Job, runner_name: str) -> bool:
        """Remove the runner registered for a job that did not finish normally; False if there was none."""
        ...

    def minted_scopes(self) -> dict[str, int]:
        """Where this client minted runners (``repo:owner/name`` / ``org:login`` -> installation id)."""
        ...

    async def minted_runners(self, scopes: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """Runners registered in ``scopes`` (default: this client's own), GitHub's runner objects, for the sweep."""
        ...

    async def remove_listed(self, runner: dict[str, Any]) -> bool:
        """Remove one runner ``minted_runners`` listed; False if it is gone already."""
        ...

    async def job_state(self, job: Job) -> tuple[str, str, str] | None:
        """GitHub's view of the job: (status, conclusion, runner name), or None when it cannot say."""
        ...

    async def run_origin(self, job: Job) -> RunOrigin | None:
        """What GitHub says about the job's workflow run (event, fork, pull request), or None without a run."""
        ...

    async def aclose(self) -> None: ...


# -- host agent -------------------------------------------------------------------------------------------


class Machine(Protocol):
    """One booted VM (or sandbox). Booted first, then handed one job's config; destroyed after the job."""

    id: str

    async def assign(self, config: GuestConfig) -> None:
        """Hand the guest its job (MMDS, serial port, pipe...). Called once."""
        ...

    def events(self) -> AsyncIterator[GuestEvent]:
        """The guest's output lines and finally its exit event; ends when the guest is gone."""
        ...

    async def stop(self) -> None:
        """Destroy the VM and everything made for it (process, tap, chroot, sockets). Idempotent."""
        ...

    def host_logs(self) -> dict[str, Path]:
        """Files on the host where the VMM itself logs about this VM, by the step name its lines get in the job's
        logs (Firecracker: ``firecracker`` and ``firecracker-metrics``); empty when there are none."""
        ...


class VMM(Protocol):
    """A VM backend: Firecracker, QEMU microvm or the bubblewrap sandbox."""

    backend: Backend

    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        """Boot a VM of this shape, ready for ``assign``; a failure unwinds every step already done."""
        ...

    async def cleanup_leftovers(self) -> list[str]:
        """Remove what a crashed agent left behind (processes, taps, chroots); names what was removed."""
        ...


class Network(Protocol):
    """Per-VM host networking: a tap on the host bridge with addresses from a pool (see adapters/network.py)."""

    async def acquire(self, vm_id: str) -> Slot:
        """A tap and addresses for one VM; never the same slot to two VMs at once."""
        ...

    async def release(self, slot: Slot) -> None:
        """Delete the slot's tap and free its addresses for reuse. Idempotent."""
        ...

    async def cleanup_leftovers(self) -> list[str]:
        """Remove taps (and stale rules) a crashed agent left behind; names what was removed."""
        ...


# -- cache ------------------------------------------------------------------------------------------------


class BlobStore(Protocol):
    """Where cache entries' bytes live (a directory, an S3 bucket).

    An upload is written as named parts (a legacy chunk, an Azure-style block) in any order and concurrently,
    then ``complete`` makes the chosen parts, in the given order, the blob ``key``; nothing is visible
    under ``key`` before that. Every method streams: no whole entry is ever held in memory. Failures surface as
    ``smith.errors`` (``Unavailable`` when the store is down, ``NotFound`` for a missing blob or part).
    """

    name: str

    async def write_part(
        self, upload_id: str, part: str, chunks: AsyncIterator[bytes], size: int, offset: int | None = None
    ) -> int:
        """Store one part of ``size`` bytes from ``chunks``; returns the bytes written (``InvalidInput`` if the
        stream is shorter or longer than ``size``). ``offset``: the part is the blob's bytes from there (a legacy
        chunk; its name is the offset), so a store may write it in place."""
        ...

    async def complete(self, upload_id: str, parts: list[str], key: str) -> int:
        """Make ``parts``, in order, blob ``key`` without copying a byte where the store can (a part may be listed
        twice); drops the upload's other parts; returns the blob's size."""
        ...

    async def abort(self, upload_id: str) -> None:
        """Drop every part of an unfinished upload. Idempotent."""
        ...

    async def size(self, key: str) -> int | None:
        """The blob's size, or None when it does not exist."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``start..end`` (inclusive; ``end=None``: to the end) of blob ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a blob. Idempotent."""
        ...

    async def stale_uploads(self, older_than: float) -> list[str]:
        """Ids of uploads whose parts were last written more than ``older_than`` seconds ago."""
        ...

    async def check(self) -> None:
        """Raise ``Unavailable`` if the store cannot be reached."""
        ...

    async def aclose(self) -> None: ...


class FileRange(Protocol):
    """Bytes of a blob in local files opened already: ``spans`` (descriptor, first byte, end byte exclusive) for a
    sender that reads the descriptors itself (``sendfile``), ``chunks()`` to read them, ``aclose()`` to close them
    (idempotent)."""

    spans: list[tuple[int, int, int]]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class LocalBlobs(Protocol):
    """A ``BlobStore`` whose blobs are local files: a download is sent from them by the kernel (``sendfile``)."""

    async def open_range(self, key: str, start: int = 0, end: int | None = None) -> FileRange:
        """Bytes ``start..end`` (inclusive; ``end=None``: to the end) of blob ``key``, every file they are in opened
        now (the caller closes them)."""
        ...


# -- log pipeline -----------------------------------------------------------------------------------------


class ClickHouse(Protocol):
    """One ClickHouse: a server over HTTP, or chdb in-process. SQL in, JSONEachRow rows out."""

    dialect: str  # "modern" or "legacy" (known after connect)
    version: str

    async def connect(self) -> None:
        """Reach the server (or open the embedded one) and learn its version; ``Unavailable`` if it cannot."""
        ...

    async def execute(self, sql: str) -> None:
        """Run one statement that returns nothing (DDL, ALTER)."""
        ...

    async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
        """Run one SELECT (without a FORMAT clause) and return its rows. ``settings`` are query settings for this
        query only (``max_execution_time``...). Cancelling the call stops the query on the server too."""
        ...

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        """``INSERT INTO table FORMAT JSONEachRow`` with ``rows``; durable on return.

        ``table`` may carry a column list (``db.t (a, b)``); ``rows`` is one JSON object a line, or (servers from
        21.x on, chdb) one JSON array of them. ``settings`` are query settings for this insert only."""
        ...

    async def aclose(self) -> None: ...
