"""The agent's part in sticky disks (domain/sticky.py): such a job boots its own VM with its disks (a warm VM
has none), and after the job its backend commits them if it succeeded, or discards them."""

from __future__ import annotations

import inspect
from typing import Any

from smith.domain.sticky import StickyLabelError, StickyPlan, requests
from smith.domain.vms import VMShape
from smith.logging import get_logger
from smith.ports import VMM, Machine
from smith.wire.agent import JobSpec

log = get_logger("smith.agent.sticky")


def plan(spec: JobSpec) -> StickyPlan | None:
    """The job's sticky disks, or None (a malformed label is logged and ignored: the job runs without)."""
    try:
        wanted = requests(spec.labels)
    except StickyLabelError as exc:
        log.warning("sticky disk label ignored", job_id=spec.id, error=str(exc))
        return None
    return StickyPlan(spec.org, spec.repo, tuple(wanted)) if wanted else None


def supported(vmm: VMM) -> bool:
    """Whether the backend boots with sticky disks (a wrapper, e.g. the metrics' ``Metered``, is looked through)."""
    inner = getattr(vmm, "inner", vmm)
    return "sticky" in inspect.signature(inner.boot).parameters


async def boot(vmm: VMM, shape: VMShape, vm_id: str, spec: JobSpec) -> Machine:
    sticky = plan(spec)
    if sticky is None:
        return await vmm.boot(shape, vm_id)
    if not supported(vmm):
        log.warning("this backend has no sticky disks: the job runs without", job_id=spec.id, backend=vmm.backend)
        return await vmm.boot(shape, vm_id)
    boot_with: Any = vmm.boot
    machine: Machine = await boot_with(shape, vm_id, sticky=sticky)
    return machine


async def finish(machine: Machine | None, succeeded: bool) -> None:
    done = getattr(machine, "finish", None)
    if done is not None:
        await done(succeeded)
