"""An in-memory Network: hands out slots with made-up taps and addresses, creates nothing on the host."""

from __future__ import annotations

from smith.domain.vms import Slot
from smith.errors import VMError


class MemoryNetwork:
    """Slots 0..size-1 of 172.30.0.0/16 as /30s: tap ``fc<n>``, gateway .1, guest .2 of each /30."""

    def __init__(self, size: int = 64, *, fail: bool = False) -> None:
        self.size = size
        self.fail = fail
        self.in_use: dict[str, Slot] = {}  # vm id -> slot
        self.released: list[Slot] = []

    async def acquire(self, vm_id: str) -> Slot:
        if self.fail:
            raise VMError("no network slot left (injected)")
        used = {s.tap for s in self.in_use.values()}
        for n in range(self.size):
            tap = f"fc{n}"
            if tap not in used:
                base = n * 4
                slot = Slot(
                    tap=tap,
                    mac=f"06:00:ac:1e:{base // 256:02x}:{base % 256 + 2:02x}",
                    guest_ip=f"172.30.{base // 256}.{base % 256 + 2}",
                    gateway_ip=f"172.30.{base // 256}.{base % 256 + 1}",
                    prefix=30,
                )
                self.in_use[vm_id] = slot
                return slot
        raise VMError("no network slot left")

    async def release(self, slot: Slot) -> None:
        for vm_id, held in list(self.in_use.items()):
            if held == slot:
                del self.in_use[vm_id]
                self.released.append(slot)
