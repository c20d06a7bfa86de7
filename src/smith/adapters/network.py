"""Host networking for VMs: a bridge, a tap per VM, addresses from a pool, NAT egress and isolation.

Built with the ``ip`` (iproute2) and ``nft`` (nftables) commands, all inside one network namespace
(``netns=None``: the host's own). What ``setup()`` makes:

* a bridge (``smithbr0``) holding the pool's gateway address, IPv4 forwarding on;
* one nftables table ``smith`` per family, replaced atomically, holding every rule we own:

  - ``bridge smith``: frames from a tap must carry that slot's MAC and IPv4 address (the ``guests`` set,
    kept in step by ``acquire``/``release``): spoofed, IPv6 and other frames are dropped; frames are never
    bridged from one tap to another (with bridge port isolation on each tap as a second lock);
  - ``inet smith``: VM -> host is refused except established/related traffic and the configured TCP/UDP
    ports on the gateway address; VM -> VM through the gateway is dropped; VM -> denied ranges (default the
    link-local range with cloud metadata services) is refused; VM -> anywhere else is forwarded and
    masqueraded out of the uplink; nothing reaches a VM unless it belongs to a connection the VM opened
    (or the host opened: the host's own output is not filtered).

Firecracker's MMDS (169.254.169.254) is answered by Firecracker inside its virtio-net device, so it never
reaches the tap and needs no rule here.

Every command that fails raises ``VMError`` naming the command and its stderr; a missing binary is a
``ConfigError``. ``acquire`` unwinds what it made when a step fails; ``teardown`` tries every step and reports
the first failure; ``cleanup_leftovers`` removes taps, tables and the bridge a crashed agent left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smith.domain.network import DENY_BY_DEFAULT, AddressPlan, SlotTable, check_ifname
from smith.domain.vms import Slot
from smith.errors import ConfigError, InvalidInput, SmithError, VMError
from smith.logging import get_logger

log = get_logger("smith.network")

TABLE = "smith"
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NETNS_DIR = Path("/var/run/netns")


@dataclass(frozen=True)
class NetworkConfig:
    pool: str = "172.30.0.0/24"
    bridge: str = "smithbr0"
    tap_prefix: str = "smt"
    uplink: str | None = None  # masquerade only out of this interface; None: out of any but the bridge
    host_tcp_ports: tuple[int, ...] = ()  # open on the gateway address: control plane, cache, logs
    host_udp_ports: tuple[int, ...] = ()  # e.g. 53 when the host runs a resolver for the guests
    deny_egress: tuple[str, ...] = DENY_BY_DEFAULT  # never forwarded: metadata services, the operator's LAN
    allow_egress: tuple[str, ...] = ()  # holes in deny_egress the operator opens on purpose (a LAN resolver)
    netns: str | None = None  # run everything inside this named network namespace
    tap_owner: int | None = None  # uid allowed to open the taps (a jailed Firecracker); None: root only
    tap_group: int = 0x736D  # netdev group of our taps: teardown deletes them all in one kernel operation
    ip_bin: str = "ip"
    nft_bin: str = "nft"
    sysctl_bin: str = "sysctl"

    def problems(self) -> list[str]:
        """What is wrong with this configuration, in words; empty when it is usable."""
        found: list[str] = []
        checks: list[tuple[str, Any]] = [
            ("pool", lambda: AddressPlan.parse(self.pool, self.tap_prefix)),
            ("bridge", lambda: check_ifname(self.bridge, "bridge name")),
        ]
        if self.uplink is not None:
            checks.append(("uplink", lambda: check_ifname(self.uplink or "", "uplink")))
        if self.netns is not None and not _NETNS_NAME.match(self.netns):
            found.append(f"netns name {self.netns!r}: use letters, digits, '.', '_' or '-'")
        for _, check in checks:
            try:
                check()
            except SmithError as exc:
                found.append(exc.message)
        if self.bridge.startswith(self.tap_prefix):
            found.append(f"bridge {self.bridge!r} must not start with the tap prefix {self.tap_prefix!r}")
        for port in (*self.host_tcp_ports, *self.host_udp_ports):
            if not 1 <= port <= 65535:
                found.append(f"host port {port} is not a port number (1..65535)")
        for what, ranges in (("deny_egress", self.deny_egress), ("allow_egress", self.allow_egress)):
            for cidr in ranges:
                try:
                    if not isinstance(ipaddress.ip_network(cidr, strict=False), ipaddress.IPv4Network):
                        found.append(f"{what} {cidr!r}: only IPv4 ranges are supported")
                except ValueError:
                    found.append(f"{what} {cidr!r} is not an address or a CIDR range")
        if not 1 <= self.tap_group < 2**32:
            found.append(f"tap group {self.tap_group} is not a device group number (1..4294967295)")
        if self.tap_owner is not None and self.tap_owner < 0:
            found.append(f"tap owner uid {self.tap_owner} is negative")
        return found

    def validated(self) -> AddressPlan:
        found = self.problems()
        if found:
            raise ConfigError("network settings: " + "; ".join(found))
        return AddressPlan.parse(self.pool, self.tap_prefix)


# -- commands ----------------------------------------------------------------------------------------------


@dataclass
class Commands:
    """Runs ip/nft/sysctl, inside ``netns`` when given. Failures become smith errors naming the command."""

    netns: str | None = None
    ip_bin: str = "ip"
    nft_bin: str = "nft"
    sysctl_bin: str = "sysctl"
    bridge_bin: str = "bridge"
    _resolved: dict[str, str] = field(default_factory=dict)

    def require(self) -> None:
        needed = [(self.ip_bin, "iproute2"), (self.nft_bin, "nftables"), (self.sysctl_bin, "procps")]
        needed.append((self.bridge_bin, "iproute2"))
        if self.netns is not None:
            needed.append(("nsenter", "util-linux"))
        for binary, package in needed:
            self._which(binary, package)
        if self.netns is not None and not (NETNS_DIR / self.netns).exists():
            raise ConfigError(f"network namespace {self.netns!r} does not exist (ip netns add {self.netns})")

    def _which(self, binary: str, package: str) -> str:
        if binary not in self._resolved:
            found = shutil.which(binary)
            if found is None:
                raise ConfigError(f"{binary} not found on PATH: install {package}")
            self._resolved[binary] = found
        return self._resolved[binary]

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        if process.returncode != 0:
            shown = " ".join(argv)
            detail = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise VMError(f"`{shown}` failed (exit {process.returncode}): {detail}")
        return out.decode()

    def _in_netns(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return argv
        # nsenter joins only the network namespace: cheaper than `ip netns exec`, which also remounts /sys.
        return [self._which("nsenter", "util-linux"), f"--net={NETNS_DIR / self.netns}", "--", *argv]

    async def ip(self, *args: str) -> str:
        ns = ["-n", self.netns] if self.netns is not None else []
        return await self.run([self._which(self.ip_bin, "iproute2"), *ns, *args])

    async def ip_batch(self, lines: Sequence[str], *, force: bool = False) -> None:
        """Several ip commands in one process; stops at the first that fails unless ``force``."""
        ns = ["-n", self.netns] if self.netns is not None else []
        flags = ["-force"] if force else []
        argv = [self._which(self.ip_bin, "iproute2"), *ns, *flags, "-batch", "-"]
        await self.run(argv, stdin="\n".join(lines) + "\n")

    async def delete_group(self, group: int, names: Sequence[str]) -> None:
        """Delete every link in a device group at once (one kernel unregister for all), then any of ``names``
        still there (a tap whose group was never set)."""
        if not names:
            return
        with contextlib.suppress(VMError):  # none in the group: whatever is left is deleted one by one below
            await self.ip("link", "del", "group", str(group))
        await self.delete_links(sorted(set(names) & set(await self.links())))

    async def delete_links(self, names: Sequence[str]) -> None:
        """Delete these links in one ip process; those already gone are fine, any left is a VMError."""
        if not names:
            return
        try:
            await self.ip_batch([f"link del dev {name}" for name in names], force=True)
        except VMError as exc:
            left = sorted(set(names) & set(await self.links()))
            if left:
                raise VMError(f"could not delete {', '.join(left)}: {exc.message}") from exc

    async def bridge(self, *args: str) -> str:
        ns = ["-n", self.netns] if self.netns is not None else []
        return await self.run([self._which(self.bridge_bin, "iproute2"), *ns, *args])

    async def nft(self, *args: str, script: str | None = None) -> str:
        argv = [self._which(self.nft_bin, "nftables"), *args]
        if script is not None:
            argv += ["-f", "-"]
        return await self.run(self._in_netns(argv), stdin=script)

    async def sysctl(self, values: dict[str, str]) -> None:
        argv = [self._which(self.sysctl_bin, "procps"), "-q", "-w", *(f"{k}={v}" for k, v in values.items())]
        await self.run(self._in_netns(argv))

    async def links(self) -> list[str]:
        data = json.loads(await self.ip("-j", "link", "show") or "[]")
        return [str(link["ifname"]) for link in data]

    async def tables(self) -> list[tuple[str, str]]:
        data = json.loads(await self.nft("-j", "list", "tables") or "{}")
        return [
            (str(item["table"]["family"]), str(item["table"]["name"]))
            for item in data.get("nftables", [])
            if "table" in item
        ]


# -- rules -------------------------------------------------------------------------------------------------


def _set_elements(values: Sequence[str]) -> str:
    return f"\n    elements = {{ {', '.join(values)} }}" if values else ""


def render_ruleset(config: NetworkConfig, plan: AddressPlan, slots: Sequence[Slot] = ()) -> str:
    """The nft script that (re)creates both ``smith`` tables atomically, with ``slots`` already admitted."""
    br = config.bridge
    taps = f'"{config.tap_prefix}*"'
    gw = plan.gateway
    pool = plan.pool
    out = f'oifname "{config.uplink}"' if config.uplink else f'oifname != "{br}"'
    tcp = _set_elements([str(p) for p in sorted(set(config.host_tcp_ports))])
    udp = _set_elements([str(p) for p in sorted(set(config.host_udp_ports))])
    deny = _set_elements(_ranges(config.deny_egress))
    allow = _set_elements(_ranges(config.allow_egress))
    guests = _set_elements([_guest_element(s) for s in slots])
    return f"""\
table bridge {TABLE} {{}}
delete table bridge {TABLE}
table inet {TABLE} {{}}
delete table inet {TABLE}

table bridge {TABLE} {{
  set guests {{
    type ifname . ether_addr . ipv4_addr{guests}
  }}
  chain prerouting {{
    type filter hook prerouting priority -200; policy accept;
    iifname {taps} jump from_guest
  }}
  chain from_guest {{
    ether type ip iifname . ether saddr . ip saddr @guests accept
    ether type arp iifname . ether saddr . arp saddr ip @guests accept
    drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname {taps} drop
    oifname {taps} drop
  }}
}}

table inet {TABLE} {{
  set host_tcp {{
    type inet_service{tcp}
  }}
  set host_udp {{
    type inet_service{udp}
  }}
  set deny_egress {{
    type ipv4_addr
    flags interval{deny}
  }}
  set allow_egress {{
    type ipv4_addr
    flags interval{allow}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{br}" jump guest_to_host
  }}
  chain guest_to_host {{
    ct state established,related accept
    ip daddr {gw} tcp dport @host_tcp accept
    ip daddr {gw} udp dport @host_udp accept
    goto refuse
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{br}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
    oifname "{br}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
    iifname "{br}" jump guest_out
    oifname "{br}" ct state established,related accept
    oifname "{br}" drop
  }}
  chain guest_out {{
    oifname "{br}" drop
    ip saddr != {pool} drop
    meta nfproto ipv6 drop
    ip daddr @allow_egress {out} accept
    ip daddr @deny_egress goto refuse
    {out} accept
    drop
  }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} {out} masquerade
  }}
}}
"""


def _ranges(cidrs: Sequence[str]) -> list[str]:
    """Distinct ranges, none inside another (nft refuses overlapping elements of an interval set)."""
    nets = sorted({ipaddress.ip_network(c, strict=False) for c in cidrs}, key=lambda n: (n.prefixlen, n))
    kept: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for net in nets:
        if not any(net.subnet_of(k) for k in kept if k.version == net.version):  # type: ignore[arg-type]
            kept.append(net)
    return [str(n) for n in sorted(kept, key=lambda n: n.network_address.packed)]


def _guest_element(slot: Slot) -> str:
    return f'"{slot.tap}" . {slot.mac} . {slot.guest_ip}'


# -- the host network --------------------------------------------------------------------------------------


class HostNetwork:
    """The ``Network`` port on a Linux host. Use ``async with`` (cleanup, setup ... teardown) or call them."""

    def __init__(self, config: NetworkConfig | None = None, *, commands: Commands | None = None) -> None:
        self.config = config or NetworkConfig()
        self.plan = self.config.validated()
        self.commands = commands or Commands(
            self.config.netns, self.config.ip_bin, self.config.nft_bin, self.config.sysctl_bin
        )
        self.table = SlotTable(self.plan)
        self.ready = False
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> HostNetwork:
        removed = await self.cleanup_leftovers()
        if removed:
            log.warning("network_leftovers_removed", removed=removed)
        await self.setup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.teardown()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create (or bring back in line) the bridge, forwarding and the rules. Idempotent."""
        cmd = self.commands
        cmd.require()
        br = self.config.bridge
        async with self._lock:
            if br not in await cmd.links():
                await cmd.ip("link", "add", "name", br, "address", self.plan.gateway_mac, "type", "bridge")
            mtu = await self.uplink_mtu()
            await cmd.ip_batch(
                [
                    f"addr flush dev {br}",
                    f"addr add {self.plan.gateway}/{self.plan.pool.prefixlen} dev {br}",
                    f"link set dev {br} mtu {min(mtu, 1500)} up",
                ]
            )
            # arp_ignore=1: on the bridge the host answers ARP only for the bridge's own address, so a guest
            # cannot learn the host's other addresses (its uplink, other NICs) by asking.
            await cmd.sysctl(
                {
                    "net.ipv4.ip_forward": "1",
                    f"net.ipv4.conf.{br}.send_redirects": "0",
                    f"net.ipv4.conf.{br}.arp_ignore": "1",
                }
            )
            live = [self.plan.slot(i) for i in self.table.live()]
            await cmd.nft(script=render_ruleset(self.config, self.plan, live))
            if live:
                await cmd.ip_batch([self._neighbour(slot) for slot in live])
            self.ready = True
        log.info(
            "network_ready",
            bridge=br,
            pool=str(self.plan.pool),
            gateway=str(self.plan.gateway),
            netns=self.config.netns,
            host_tcp_ports=list(self.config.host_tcp_ports),
        )

    async def uplink_mtu(self) -> int:
        """The uplink's MTU (the configured one, else the default route's device), 1500 if unknown. The bridge
        takes it when lower (a 1460/1450/1420 cloud or tunnel uplink), and the forward chain clamps every
        guest connection's MSS to the route's MTU, so no full-size segment is lost in a path MTU black hole."""
        dev = self.config.uplink
        if dev is None:
            routes = json.loads(await self.commands.ip("-j", "route", "show", "default") or "[]")
            dev = next((str(r["dev"]) for r in routes if r.get("dev")), None)
        if dev is None:
            return 1500
        found = json.loads(await self.commands.ip("-j", "link", "show", "dev", dev) or "[]")
        return int(found[0].get("mtu", 1500)) if found else 1500

    async def teardown(self) -> None:
        """Remove every tap, both tables and the bridge. Tries every step; raises the first failure."""
        async with self._lock:
            errors: list[SmithError] = []
            live = list(self.table.live())
            try:
                await self.commands.delete_group(self.config.tap_group, [self.plan.slot(i).tap for i in live])
                for index in live:
                    self.table.free(index)
            except SmithError as exc:
                errors.append(exc)
            errors += await self._remove_base()
            self.ready = False
        log.info("network_down", bridge=self.config.bridge, netns=self.config.netns, errors=len(errors))
        if errors:
            raise errors[0]

    async def cleanup_leftovers(self) -> list[str]:
        """Remove taps with our prefix that no slot here owns; before ``setup``, also stale tables and bridge."""
        self.commands.require()
        removed: list[str] = []
        async with self._lock:
            mine = {self.plan.slot(i).tap for i in self.table.live()}
            links = await self.commands.links()
            stale = [name for name in links if self.plan.index_of(name) is not None and name not in mine]
            if self.ready or not stale:
                await self.commands.delete_links(stale)
            else:  # nothing of ours is live: every tap in our group is a leftover
                await self.commands.delete_group(self.config.tap_group, stale)
            removed += [f"tap {name}" for name in stale]
            if not self.ready:
                existing = await self.commands.tables()
                present = [f"{fam} {TABLE}" for fam in ("bridge", "inet") if (fam, TABLE) in existing]
                bridge_there = self.config.bridge in links
                errors = await self._remove_base()
                if errors:
                    raise errors[0]
                removed += [f"nft table {t}" for t in present]
                removed += [f"bridge {self.config.bridge}"] if bridge_there else []
        return removed

    async def _remove_base(self) -> list[SmithError]:
        errors: list[SmithError] = []
        try:
            existing = await self.commands.tables()
            for family in ("bridge", "inet"):
                if (family, TABLE) in existing:
                    await self.commands.nft("delete", "table", family, TABLE)
        except SmithError as exc:
            errors.append(exc)
        try:
            await self.commands.delete_links([self.config.bridge])
        except SmithError as exc:
            errors.append(exc)
        return errors

    # -- slots -------------------------------------------------------------------------------------------

    async def acquire(self, vm_id: str) -> Slot:
        """A tap on the bridge and addresses for one VM; unwinds what it made if a step fails."""
        async with self._lock:
            if not self.ready:
                raise VMError("host network is not set up: call setup() first")
            index = self.table.allocate(vm_id)
            slot = self.slot(index)
            try:
                await self._create_tap(slot)
                await self.commands.nft("add", "element", "bridge", TABLE, "guests", f"{{ {_guest_element(slot)} }}")
            except BaseException:
                try:
                    await self.commands.delete_links([slot.tap])
                    self.table.free(index)
                except SmithError as undo:
                    log.error("network_unwind_failed", tap=slot.tap, error=undo.message)
                raise
        log.debug("network_slot_acquired", vm_id=vm_id, tap=slot.tap, guest_ip=slot.guest_ip)
        return slot

    async def _create_tap(self, slot: Slot) -> None:
        owner = f" user {self.config.tap_owner}" if self.config.tap_owner is not None else ""
        lines = [
            f"tuntap add dev {slot.tap} mode tap{owner}",
            f"link set dev {slot.tap} group {self.config.tap_group} master {self.config.bridge}",
            # No flooding onto a tap: the host's frames for one VM must never reach another (a root job can put
            # its NIC in promiscuous mode). Each tap gets its guest's MAC statically, and the host knows each
            # guest's MAC for good, so it never needs to broadcast an ARP request.
            f"link set dev {slot.tap} type bridge_slave isolated on learning off flood off mcast_flood off"
            " bcast_flood off",
            f"link set dev {slot.tap} up",
            self._neighbour(slot),
        ]
        try:
            await self.commands.ip_batch(lines)
        except VMError:
            # A tap of that name survived somewhere (a crash between checks): remove it and try once more.
            if slot.tap not in await self.commands.links():
                raise
            await self.commands.ip("link", "del", "dev", slot.tap)
            await self.commands.ip_batch(lines)
        await self.commands.bridge("fdb", "replace", slot.mac, "dev", slot.tap, "master", "static")

    def _neighbour(self, slot: Slot) -> str:
        """The host's permanent neighbour entry for a guest (no ARP broadcasts onto the taps), as ip args."""
        return f"neigh replace {slot.guest_ip} lladdr {slot.mac} dev {self.config.bridge} nud permanent"

    async def release(self, slot: Slot) -> None:
        """Delete the slot's tap and forget its addresses. Releasing a slot that is already free is a no-op."""
        index = self.plan.index_of(slot.tap)
        if index is None:
            raise InvalidInput(f"tap {slot.tap!r} is not a slot of this network (prefix {self.config.tap_prefix!r})")
        if slot != self.slot(index):
            raise InvalidInput(f"slot {slot} does not match this network's slot {index}: {self.slot(index)}")
        async with self._lock:
            vm_id = self.table.owner(index)
            if vm_id is None:
                return
            errors: list[SmithError] = []
            if self.ready:
                try:
                    await self.commands.nft(
                        "delete", "element", "bridge", TABLE, "guests", f"{{ {_guest_element(slot)} }}"
                    )
                except SmithError as exc:
                    errors.append(exc)
            with contextlib.suppress(SmithError):  # gone with the bridge, or never made
                await self.commands.ip("neigh", "del", slot.guest_ip, "dev", self.config.bridge)
            try:
                await self.commands.delete_links([slot.tap])
            except SmithError as exc:
                # The tap is still there: keep the index out of circulation rather than hand it out twice.
                raise exc from (errors[0] if errors else None)
            self.table.free(index)
        log.debug("network_slot_released", vm_id=vm_id, tap=slot.tap)
        if errors:
            raise errors[0]

    def live(self) -> dict[str, Slot]:
        """Slots in use, by VM id."""
        return {vm_id: self.slot(index) for index, vm_id in self.table.live().items()}

    def slot(self, index: int) -> Slot:
        """Slot ``index``; in a named namespace it carries that namespace's path, which the VMM must join (the
        jailer's --netns) to open the tap."""
        slot = self.plan.slot(index)
        return replace(slot, netns=str(NETNS_DIR / self.config.netns)) if self.config.netns is not None else slot


def uid_of(value: str | int | None) -> int | None:
    """A uid from a number or a user name (for ``tap_owner``)."""
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    import pwd

    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError as exc:
        raise ConfigError(f"no such user {value!r} for the tap owner") from exc


def is_root() -> bool:
    return os.geteuid() == 0
