"""How VM network slots are numbered and handed out. Pure: no commands run here.

A pool such as ``172.30.0.0/24`` gives the bridge its first host address (the gateway, ``.1``) and slot ``i``
the address ``network + 2 + i``, a MAC derived from that address (``06:00:`` + the four address bytes: locally
administered, unicast) and the tap ``<prefix><i>``. Everything about a slot follows from its index, so a
restarted agent recognises its own leftovers by name alone.

``SlotTable`` hands out indices: never one index to two VMs, and a released index goes to the back of the
queue, so an address is reused as late as possible (stale conntrack or ARP entries of the last owner have
time to expire).
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass

from smith.domain.vms import Slot
from smith.errors import ConfigError, Conflict, InvalidInput, Unavailable

MAX_IFNAME = 15  # IFNAMSIZ - 1
# Where a job has no business: this host's network and its neighbours (control planes, Valkey, ClickHouse on
# private addresses), cloud metadata (link-local), loopback, multicast and reserved space.
DENY_BY_DEFAULT = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_ifname(name: str, what: str, *, room: int = 0) -> None:
    """Raise ConfigError unless ``name`` is a usable interface name with ``room`` characters to spare."""
    if not _IFNAME.match(name):
        raise ConfigError(f"{what} {name!r}: use letters, digits, '_' or '-', starting with a letter")
    if len(name) + room > MAX_IFNAME:
        limit = MAX_IFNAME - room
        raise ConfigError(f"{what} {name!r} is too long: at most {limit} characters (interface names are <= 15)")


def mac_for(address: ipaddress.IPv4Address) -> str:
    return "06:00:" + ":".join(f"{b:02x}" for b in address.packed)


@dataclass(frozen=True)
class AddressPlan:
    """A pool of IPv4 addresses cut into numbered slots."""

    pool: ipaddress.IPv4Network
    tap_prefix: str

    @classmethod
    def parse(cls, pool: str, tap_prefix: str) -> AddressPlan:
        try:
            network = ipaddress.ip_network(pool, strict=True)
        except ValueError as exc:
            raise ConfigError(f"network pool {pool!r} is not a CIDR network like 172.30.0.0/24: {exc}") from exc
        if not isinstance(network, ipaddress.IPv4Network):
            raise ConfigError(f"network pool {pool!r}: only IPv4 pools are supported")
        if network.num_addresses < 4:
            raise ConfigError(f"network pool {pool!r} is too small: a /30 or larger holds a gateway and a VM")
        plan = cls(network, tap_prefix)
        check_ifname(tap_prefix, "tap prefix", room=len(str(plan.capacity - 1)))
        if tap_prefix[-1].isdigit():
            raise ConfigError(f"tap prefix {tap_prefix!r} must not end in a digit (slot numbers follow it)")
        return plan

    @property
    def capacity(self) -> int:
        """Slots in the pool: all addresses but the network, the gateway and the broadcast address."""
        return self.pool.num_addresses - 3

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pool.network_address + 1

    @property
    def gateway_mac(self) -> str:
        return mac_for(self.gateway)

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.capacity:
            raise InvalidInput(f"slot {index} is outside the pool {self.pool} (0..{self.capacity - 1})")
        address = self.pool.network_address + 2 + index
        return Slot(
            tap=f"{self.tap_prefix}{index}",
            mac=mac_for(address),
            guest_ip=str(address),
            gateway_ip=str(self.gateway),
            prefix=self.pool.prefixlen,
        )

    def index_of(self, tap: str) -> int | None:
        """The slot index a tap name stands for, or None if the name is not one of ours."""
        rest = tap[len(self.tap_prefix) :] if tap.startswith(self.tap_prefix) else ""
        if not rest.isdigit() or (len(rest) > 1 and rest[0] == "0"):
            return None
        index = int(rest)
        return index if index < self.capacity else None


class SlotTable:
    """Which slot index belongs to which VM."""

    def __init__(self, plan: AddressPlan) -> None:
        self.plan = plan
        self._free: deque[int] = deque(range(plan.capacity))
        self._owner: dict[int, str] = {}
        self._by_vm: dict[str, int] = {}

    def allocate(self, vm_id: str) -> int:
        if not vm_id or not vm_id.strip():
            raise InvalidInput("a network slot needs a non-empty vm_id")
        if vm_id in self._by_vm:
            raise Conflict(f"VM {vm_id} already holds network slot {self._by_vm[vm_id]}")
        if not self._free:
            raise Unavailable(f"no free network slot: all {self.plan.capacity} slots of {self.plan.pool} are in use")
        index = self._free.popleft()
        self._owner[index] = vm_id
        self._by_vm[vm_id] = index
        return index

    def free(self, index: int) -> None:
        vm_id = self._owner.pop(index, None)
        if vm_id is None:
            return
        del self._by_vm[vm_id]
        self._free.append(index)

    def owner(self, index: int) -> str | None:
        return self._owner.get(index)

    def live(self) -> dict[int, str]:
        return dict(self._owner)
