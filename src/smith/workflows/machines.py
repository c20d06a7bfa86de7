"""Guests for workflow jobs: each job boots a fresh machine of a VM backend and drives it in steps mode."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from smith.domain.vms import VMShape
from smith.ports import VMM
from smith.wire.agent import JobSpec, ServiceAccess
from smith.wire.guest import GuestConfig
from smith.workflows.executor import SessionFactory, new_vm_id
from smith.workflows.session import GuestSession


def vm_sessions(vmm: VMM, shape: VMShape, cache: ServiceAccess | None = None) -> SessionFactory:
    @contextlib.asynccontextmanager
    async def open_session(key: str) -> AsyncIterator[GuestSession]:
        vm_id = "wf-" + new_vm_id()
        machine = await vmm.boot(shape, vm_id)
        try:
            job = JobSpec(
                id=re.sub(r"[^A-Za-z0-9_.-]", "-", key)[:100] or "job",
                runner_class=shape.runner_class,
                vcpus=shape.vcpus,
                memory_mib=shape.memory_mib,
                run="",
            )
            await machine.assign(GuestConfig(job=job, cache=cache, steps=True))
            yield GuestSession(machine, host_workdir(machine))  # type: ignore[arg-type]
        finally:
            await machine.stop()

    return open_session


def host_workdir(machine: object) -> Path | None:
    """The guest's work dir seen from the host, where the backend shares it (the sandbox's root), else None."""
    root = getattr(machine, "root", None)
    return Path(root) / "work" if root is not None else None
