"""What a host has promised to VMs: vCPUs, memory, VM slots and disk, never more than it has.

Disk is each VM's scratch space (its class's ``disk_mib``: a sandbox's /work, a VM's scratch drive), counted
when ``disk_mib`` is set (> 0): sparse files would otherwise promise the same free space to every VM."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smith.domain.vms import VMShape


@dataclass
class Ledger:
    vcpus: int
    memory_mib: int
    max_vms: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    used_vms: int = 0
    disk_mib: int = 0  # 0: disk is not counted
    used_disk_mib: int = 0

    def fits(self, shape: VMShape) -> bool:
        return (
            self.used_vms + 1 <= self.max_vms
            and self.used_vcpus + shape.vcpus <= self.vcpus
            and self.used_memory_mib + shape.memory_mib <= self.memory_mib
            and (not self.disk_mib or self.used_disk_mib + shape.disk_mib <= self.disk_mib)
        )

    def reserve(self, shape: VMShape) -> bool:
        """Take room for one VM of ``shape``; False (and nothing taken) when it does not fit."""
        if not self.fits(shape):
            return False
        self.used_vcpus += shape.vcpus
        self.used_memory_mib += shape.memory_mib
        self.used_vms += 1
        self.used_disk_mib += shape.disk_mib
        return True

    def release(self, shape: VMShape) -> None:
        self.used_vcpus -= shape.vcpus
        self.used_memory_mib -= shape.memory_mib
        self.used_vms -= 1
        self.used_disk_mib -= shape.disk_mib
        if min(self.used_vcpus, self.used_memory_mib, self.used_vms, self.used_disk_mib) < 0:
            raise AssertionError("capacity released twice")

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.used_vcpus

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib

    @property
    def free_vms(self) -> int:
        return self.max_vms - self.used_vms

    @property
    def free_disk_mib(self) -> int | None:
        return self.disk_mib - self.used_disk_mib if self.disk_mib else None


def disk_budget(path: Path, configured: int | None, reserve_mib: int) -> int:
    """Disk (MiB) VMs may take: ``configured``, else the free space under ``path`` now less ``reserve_mib``
    (at least 1 MiB, so a full disk counts as full rather than as not counted)."""
    if configured is not None:
        return configured
    path.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(path)
    return max(1, st.f_bavail * st.f_frsize // (1 << 20) - reserve_mib)


def disk_room(ledger: Ledger, pool: Any) -> bool:
    """Whether the largest scratch disk of the served classes fits in what is free (idle warm VMs' included):
    the control plane leases by vCPUs and memory, so a job is leased only when its disk surely fits too."""
    free = ledger.free_disk_mib
    if free is None or not pool.shapes:
        return True
    idle = sum(pool.shapes[cls].disk_mib for cls, _ in pool.idle())
    return bool(free + idle >= max(shape.disk_mib for shape in pool.shapes.values()))
