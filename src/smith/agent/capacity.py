"""What a host has promised to VMs: vCPUs, memory and VM slots, never more than it has."""

from __future__ import annotations

from dataclasses import dataclass

from smith.domain.vms import VMShape


@dataclass
class Ledger:
    vcpus: int
    memory_mib: int
    max_vms: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    used_vms: int = 0

    def fits(self, shape: VMShape) -> bool:
        return (
            self.used_vms + 1 <= self.max_vms
            and self.used_vcpus + shape.vcpus <= self.vcpus
            and self.used_memory_mib + shape.memory_mib <= self.memory_mib
        )

    def reserve(self, shape: VMShape) -> bool:
        """Take room for one VM of ``shape``; False (and nothing taken) when it does not fit."""
        if not self.fits(shape):
            return False
        self.used_vcpus += shape.vcpus
        self.used_memory_mib += shape.memory_mib
        self.used_vms += 1
        return True

    def release(self, shape: VMShape) -> None:
        self.used_vcpus -= shape.vcpus
        self.used_memory_mib -= shape.memory_mib
        self.used_vms -= 1
        if min(self.used_vcpus, self.used_memory_mib, self.used_vms) < 0:
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
