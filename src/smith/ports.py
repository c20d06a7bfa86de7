"""Small Protocols the services depend on; adapters implement them, ``smith.testing`` fakes them.

Each service's own ports are added here as the service lands (VMM and Network for the agent, BlobStore for
the cache, LogSink for the logs pipeline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from smith.domain.jobs import Job
from smith.domain.vms import Backend, NetSlot, VMShape
from smith.wire.agent import RunnerCredential
from smith.wire.guest import GuestConfig, GuestEvent


class RunnerCredentials(Protocol):
    """Mints what an ephemeral GitHub runner needs to register for one job (GitHub App, or a fake)."""

    async def for_job(self, job: Job, runner_name: str) -> RunnerCredential: ...

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
    """Hands out per-VM network slots (a tap device plus the guest's addresses) and takes them back."""

    async def acquire(self, vm_id: str) -> NetSlot:
        """A free slot for ``vm_id``, its tap created and up; raises VMError when none is left."""
        ...

    async def release(self, slot: NetSlot) -> None:
        """Tear the slot's tap down and free it. Idempotent."""
        ...
