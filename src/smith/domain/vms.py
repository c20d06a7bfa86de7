"""VM shapes and states as the host agent sees them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Backend(StrEnum):
    FIRECRACKER = "firecracker"
    QEMU = "qemu"
    SANDBOX = "sandbox"


@dataclass(frozen=True)
class VMShape:
    """What a VM is sized for; a warm pool holds VMs of one shape (one runner class)."""

    runner_class: str
    vcpus: int
    memory_mib: int
    disk_mib: int = 8192


class VMState(StrEnum):
    BOOTING = "booting"
    READY = "ready"  # booted, waiting for a job's config (warm)
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class NetSlot:
    """One VM's network: its host tap device and the guest's addresses (IPv4, dotted quads)."""

    tap: str
    mac: str
    guest_ip: str
    gateway_ip: str
    netmask: str
    netns: str = ""  # a network namespace path the VMM joins (jailer --netns); "" = the host's
