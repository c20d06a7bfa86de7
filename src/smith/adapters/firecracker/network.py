"""A real Network for Firecracker: one tap device per VM, each on its own /30 (``ip`` from iproute2, as root).

Slot ``n`` of ``172.30.0.0/16`` (configurable) is the /30 at ``base + 4n``: the tap holds ``.1`` (the guest's
gateway), the guest gets ``.2`` through the kernel's ``ip=`` argument. Taps are made inside ``netns`` when given
(the jailer joins it with ``--netns``), so VMs are cut off from the host's interfaces; routing and NAT out of
that namespace belong to the host's network setup, not to this class.
"""

from __future__ import annotations

import asyncio
import ipaddress

from smith.domain.vms import Slot
from smith.errors import VMError

TAP_PREFIX = "fc"


class TapNetwork:
    def __init__(self, cidr: str = "172.30.0.0/16", *, netns: str = "", size: int | None = None) -> None:
        self.net = ipaddress.IPv4Network(cidr)
        self.netns = netns  # a name under /var/run/netns, "" for the host's namespace
        self.size = min(size or self.net.num_addresses // 4, self.net.num_addresses // 4)
        self._used: dict[int, str] = {}  # slot index -> vm id
        self._lock = asyncio.Lock()

    def slot(self, index: int) -> Slot:
        base = int(self.net.network_address) + 4 * index
        octets = ipaddress.IPv4Address(base + 2).packed
        return Slot(
            tap=f"{TAP_PREFIX}{index}",
            mac="06:00:" + ":".join(f"{b:02x}" for b in octets),  # locally administered, unique per slot
            guest_ip=str(ipaddress.IPv4Address(base + 2)),
            gateway_ip=str(ipaddress.IPv4Address(base + 1)),
            prefix=30,
            netns=f"/var/run/netns/{self.netns}" if self.netns else "",
        )

    async def acquire(self, vm_id: str) -> Slot:
        async with self._lock:
            index = next((i for i in range(self.size) if i not in self._used), None)
            if index is None:
                raise VMError(f"all {self.size} network slots are in use", retryable=True)
            self._used[index] = vm_id
        slot = self.slot(index)
        try:
            await self._ip("link", "del", slot.tap, check=False)  # a tap a crashed agent left under this name
            await self._ip("tuntap", "add", "dev", slot.tap, "mode", "tap")
            await self._ip("addr", "add", f"{slot.gateway_ip}/30", "dev", slot.tap)
            await self._ip("link", "set", slot.tap, "up")
        except VMError:
            await self.release(slot)
            raise
        return slot

    async def release(self, slot: Slot) -> None:
        if not slot.tap.startswith(TAP_PREFIX) or not slot.tap[len(TAP_PREFIX) :].isdigit():
            return  # not one of ours
        await self._ip("link", "del", slot.tap, check=False)
        self._used.pop(int(slot.tap[len(TAP_PREFIX) :]), None)

    async def cleanup_leftovers(self) -> list[str]:
        """Delete taps named like ours that no VM of this process holds (a crashed agent's)."""
        proc = await asyncio.create_subprocess_exec(
            "ip",
            *(["-n", self.netns] if self.netns else []),
            "-o",
            "link",
            "show",
            "type",
            "tun",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        removed = []
        for line in out.decode(errors="replace").splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            suffix = name[len(TAP_PREFIX) :]
            if name.startswith(TAP_PREFIX) and suffix.isdigit() and int(suffix) not in self._used:
                await self._ip("link", "del", name, check=False)
                removed.append(name)
        return removed

    async def _ip(self, *args: str, check: bool = True) -> None:
        argv = ["ip", *(["-n", self.netns] if self.netns else []), *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
        except OSError as exc:
            raise VMError(f"cannot run ip: {exc}") from exc
        if check and proc.returncode:
            raise VMError(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
