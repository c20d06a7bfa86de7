"""VM shapes and states as the host agent sees them."""

from __future__ import annotations

import ipaddress
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
class Slot:
    """One VM's place on the host network: its tap on the bridge and the addresses the guest configures.

    The guest sets ``mac`` on its NIC, ``guest_ip/prefix`` on it and a default route via ``gateway_ip``
    (Firecracker: ``guest_mac`` of the network interface and ``ip=`` on the kernel command line).
    """

    tap: str
    mac: str
    guest_ip: str
    gateway_ip: str
    prefix: int
    netns: str = ""  # a network namespace path the VMM joins (jailer --netns); "" = the host's

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix}").netmask)
