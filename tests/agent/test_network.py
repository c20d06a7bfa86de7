"""Host networking with real packets, inside throwaway network namespaces (root only).

The world: a "host" namespace where HostNetwork sets up its bridge and rules, an "internet" namespace behind
the host's uplink veth, and two "VM" namespaces, each wired to its slot's real tap by a userspace relay (as
Firecracker would drive the tap). Nothing leaves these namespaces.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from smith.adapters.network import HostNetwork, NetworkConfig
from smith.domain.vms import Slot
from smith.errors import VMError
from tests.agent.netns import (
    GuestWire,
    Server,
    Sniffer,
    arp_answers,
    arp_reply,
    del_netns,
    links,
    mac_bytes,
    netns_list,
    new_netns,
    nft_tables,
    run_in,
    send_frame,
    sh,
    skip_unless_root,
    tcp_connect,
)

pytestmark = skip_unless_root()

ALLOWED = 18080  # e.g. the cache server's port on the gateway
OTHER = 18081  # a host port the VMs must not reach
UPLINK_IP = "198.51.100.1"
INTERNET_IP = "198.51.100.2"
METADATA_IP = "169.254.169.254"
LAN_IP = "10.55.0.1"  # another machine on the operator's network (a control plane, Valkey, ClickHouse)
RESOLVER_IP = "192.168.200.7"  # a LAN address the operator allows on purpose (a resolver, a proxy)


@dataclass
class World:
    host: str
    internet: str
    vm_a: str
    vm_b: str
    net: HostNetwork
    a: Slot
    b: Slot
    internet_server: Server


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    host, internet, vm_a, vm_b = (new_netns(t) for t in ("host", "inet", "vma", "vmb"))
    cleanups: list[object] = []
    net: HostNetwork | None = None
    try:
        sh("ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", internet)
        sh("ip", "-n", host, "addr", "add", f"{UPLINK_IP}/24", "dev", "up0")
        sh("ip", "-n", host, "link", "set", "up0", "up")
        sh("ip", "-n", internet, "addr", "add", f"{INTERNET_IP}/24", "dev", "wan0")
        sh("ip", "-n", internet, "link", "set", "wan0", "up")
        for far in (METADATA_IP, LAN_IP, RESOLVER_IP):
            sh("ip", "-n", internet, "addr", "add", f"{far}/32", "dev", "lo")
            sh("ip", "-n", host, "route", "add", f"{far}/32", "via", INTERNET_IP)

        config = NetworkConfig(uplink="up0", host_tcp_ports=(ALLOWED,), netns=host, allow_egress=(f"{RESOLVER_IP}/32",))
        net = HostNetwork(config)
        asyncio.run(net.__aenter__())
        a = asyncio.run(net.acquire("vm-a"))
        b = asyncio.run(net.acquire("vm-b"))
        for ns, slot in ((vm_a, a), (vm_b, b)):
            wire = GuestWire(host, ns, slot).start()
            cleanups.append(wire)
        gw = a.gateway_ip
        cleanups += [
            Server(host, gw, ALLOWED, "host-allowed"),
            Server(host, gw, OTHER, "host-other"),
            Server(host, UPLINK_IP, ALLOWED, "host-uplink"),
            Server(vm_b, b.guest_ip, 9000, "vm-b"),
        ]
        internet_server = Server(internet, "0.0.0.0", 80, "internet")
        cleanups.append(internet_server)
        yield World(host, internet, vm_a, vm_b, net, a, b, internet_server)
    finally:
        for item in reversed(cleanups):
            item.stop() if isinstance(item, GuestWire) else item.close()  # type: ignore[attr-defined]
        if net is not None:
            asyncio.run(net.teardown())
        for ns in (host, internet, vm_a, vm_b):
            del_netns(ns)


def test_vm_reaches_an_allowed_port_on_the_gateway(world: World) -> None:
    assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED) == f"ok host-allowed {world.a.guest_ip}"
    assert tcp_connect(world.vm_b, world.b.gateway_ip, ALLOWED) == f"ok host-allowed {world.b.guest_ip}"


def test_vm_is_refused_on_other_host_ports_and_addresses(world: World) -> None:
    # The listeners are there (the host itself reaches them) ...
    assert tcp_connect(world.host, world.a.gateway_ip, OTHER).startswith("ok host-other")
    assert tcp_connect(world.host, UPLINK_IP, ALLOWED).startswith("ok host-uplink")
    # ... but a VM is refused: only the allowed ports, only on the gateway address.
    assert tcp_connect(world.vm_a, world.a.gateway_ip, OTHER) == "ConnectionRefusedError"
    assert tcp_connect(world.vm_a, UPLINK_IP, ALLOWED) == "ConnectionRefusedError"


def test_vms_cannot_reach_each_other(world: World) -> None:
    # VM B's server answers the host (host -> VM is allowed) ...
    assert tcp_connect(world.host, world.b.guest_ip, 9000) == f"ok vm-b {world.a.gateway_ip}"
    # ... but not VM A, neither across the bridge nor routed through the gateway.
    assert not tcp_connect(world.vm_a, world.b.guest_ip, 9000).startswith("ok")
    sh("ip", "-n", world.vm_a, "route", "add", f"{world.b.guest_ip}/32", "via", world.a.gateway_ip)
    try:
        assert not tcp_connect(world.vm_a, world.b.guest_ip, 9000).startswith("ok")
    finally:
        sh("ip", "-n", world.vm_a, "route", "del", f"{world.b.guest_ip}/32")


def test_the_bridge_layer_alone_keeps_vms_apart(world: World) -> None:
    # With br_netfilter on (the default here), bridged IPv4 also meets the inet rules. Switch that off so only
    # the bridge-family rules and port isolation stand between the VMs.
    key = "net.bridge.bridge-nf-call-iptables"
    sh("ip", "netns", "exec", world.host, "sysctl", "-qw", f"{key}=0")
    try:
        assert not tcp_connect(world.vm_a, world.b.guest_ip, 9000).startswith("ok")
        assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED) == f"ok host-allowed {world.a.guest_ip}"
    finally:
        sh("ip", "netns", "exec", world.host, "sysctl", "-qw", f"{key}=1")


def test_vm_reaches_the_internet_through_nat(world: World) -> None:
    # The internet has no route to the pool: the answer comes back only because the source was masqueraded.
    assert tcp_connect(world.vm_a, INTERNET_IP, 80) == f"ok internet {UPLINK_IP}"
    assert tcp_connect(world.vm_b, INTERNET_IP, 80) == f"ok internet {UPLINK_IP}"


def test_metadata_range_is_refused_for_vms(world: World) -> None:
    assert tcp_connect(world.host, METADATA_IP, 80) == f"ok internet {UPLINK_IP}"
    assert tcp_connect(world.vm_a, METADATA_IP, 80) == "ConnectionRefusedError"


def test_private_ranges_are_refused_unless_allowed(world: World) -> None:
    # The operator's own network (other machines' control plane, Valkey, ClickHouse) is off limits by default,
    # even out of the uplink; an address the operator allows on purpose stays reachable.
    assert tcp_connect(world.host, LAN_IP, 80) == f"ok internet {UPLINK_IP}"
    assert tcp_connect(world.vm_a, LAN_IP, 80) == "ConnectionRefusedError"
    assert tcp_connect(world.vm_a, RESOLVER_IP, 80) == f"ok internet {UPLINK_IP}"


def test_a_vm_never_sees_frames_meant_for_another(world: World) -> None:
    # A root job puts its NIC in promiscuous mode: it must not see the host's replies to another VM, nor that
    # VM's broadcasts and multicasts.
    sniffer = Sniffer(world.vm_b)
    try:
        assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED).startswith("ok")
        assert tcp_connect(world.vm_a, INTERNET_IP, 80).startswith("ok")
        sh("ip", "-n", world.host, "neigh", "flush", "dev", world.net.config.bridge)  # the host forgets A's MAC
        assert tcp_connect(world.host, world.a.guest_ip, 9000) == "ConnectionRefusedError"  # host -> A, fresh

        def shout() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                for target in ("255.255.255.255", str(world.net.plan.pool.broadcast_address), "224.0.0.251"):
                    udp.sendto(b"hello", (target, 5353))

        run_in(world.vm_a, shout)
        assert tcp_connect(world.vm_b, world.b.gateway_ip, ALLOWED).startswith("ok")  # B's own traffic flows
        frames = sniffer.frames()
    finally:
        sniffer.close()
    a_mac = mac_bytes(world.a.mac)
    assert frames, "the sniffer saw nothing at all: it is not listening"
    leaked = [f[:14].hex() for f in frames if a_mac in (f[0:6], f[6:12])]
    assert leaked == []
    a_ip = socket.inet_aton(world.a.guest_ip)  # not even the host's ARP broadcasts asking for A
    assert [f.hex() for f in frames if a_ip in f] == []


def test_arp_for_another_vms_address_is_dropped(world: World) -> None:
    assert tcp_connect(world.host, world.b.guest_ip, 9000).startswith("ok vm-b")  # the host knows B's MAC
    gw_mac = world.net.plan.gateway_mac
    send_frame(world.vm_a, "eth0", arp_reply(world.a.mac, world.b.guest_ip, gw_mac, world.a.gateway_ip))
    send_frame(world.vm_a, "eth0", arp_reply(world.a.mac, world.a.gateway_ip, gw_mac, world.a.gateway_ip))
    neigh = sh("ip", "-n", world.host, "neigh", "show", world.b.guest_ip)
    assert world.a.mac not in neigh
    assert tcp_connect(world.host, world.b.guest_ip, 9000).startswith("ok vm-b")


def test_arp_tells_a_vm_nothing_of_the_hosts_other_addresses(world: World) -> None:
    sniffer = Sniffer(world.vm_a)
    try:
        for asked in (UPLINK_IP, world.a.gateway_ip):
            frame = arp_reply(world.a.mac, world.a.guest_ip, "ff:ff:ff:ff:ff:ff", asked, op=1)
            send_frame(world.vm_a, "eth0", frame)
        assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED).startswith("ok")  # the answers are in by now
        frames = sniffer.frames()
    finally:
        sniffer.close()
    assert arp_answers(frames, world.a.gateway_ip)  # the gateway answers for itself ...
    assert arp_answers(frames, UPLINK_IP) == []  # ... and for nothing else the host holds


def test_dns_and_dhcp_to_the_host_are_dropped_unless_listed(world: World) -> None:
    def listener(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.settimeout(0.5)
        return sock

    dns, dhcp = run_in(world.host, lambda: listener(53)), run_in(world.host, lambda: listener(67))

    def ask() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            udp.sendto(b"query", (world.a.gateway_ip, 53))
            for target in ("255.255.255.255", str(world.net.plan.pool.broadcast_address), world.a.gateway_ip):
                udp.sendto(b"discover", (target, 67))

    try:
        run_in(world.vm_a, ask)
        run_in(world.host, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"own", ("127.0.0.1", 53)))
        assert dns.recvfrom(64)[0] == b"own"  # the host's own query arrives; the VM's never did
        for sock in (dns, dhcp):
            with pytest.raises(TimeoutError):
                sock.recvfrom(64)
    finally:
        dns.close()
        dhcp.close()


def test_ipv6_from_a_vm_reaches_neither_the_host_nor_another_vm(world: World) -> None:
    sh("ip", "-n", world.host, "addr", "add", "fd00:5::1/64", "dev", world.net.config.bridge, "nodad")
    sh("ip", "-n", world.vm_a, "addr", "add", "fd00:5::a/64", "dev", "eth0", "nodad")
    sh("ip", "-n", world.vm_b, "addr", "add", "fd00:5::b/64", "dev", "eth0", "nodad")
    servers = [Server(world.host, "fd00:5::1", ALLOWED, "host-v6"), Server(world.vm_b, "fd00:5::b", 9001, "vm-b-v6")]
    try:
        # No IPv6 frame leaves a tap: not to the host, not to another VM, not even an answer to the host.
        assert tcp_connect(world.vm_a, "fd00:5::1", ALLOWED) == "timeout"
        assert tcp_connect(world.vm_a, "fd00:5::b", 9001) == "timeout"
        assert tcp_connect(world.host, "fd00:5::b", 9001) == "timeout"
    finally:
        for server in servers:
            server.close()
        sh("ip", "-n", world.host, "addr", "del", "fd00:5::1/64", "dev", world.net.config.bridge)
        for ns, address in ((world.vm_a, "fd00:5::a/64"), (world.vm_b, "fd00:5::b/64")):
            sh("ip", "-n", ns, "addr", "del", address, "dev", "eth0")


def test_spoofed_source_address_is_dropped(world: World) -> None:
    spoofed = str(world.net.plan.slot(200).guest_ip)  # an address no VM holds: replies would come back to A
    sh("ip", "-n", world.vm_a, "addr", "add", f"{spoofed}/32", "dev", "eth0")
    try:
        assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED, source=spoofed) == "timeout"
        assert tcp_connect(world.vm_a, INTERNET_IP, 80, source=spoofed) == "timeout"
    finally:
        sh("ip", "-n", world.vm_a, "addr", "del", f"{spoofed}/32", "dev", "eth0")
    assert tcp_connect(world.vm_a, world.a.gateway_ip, ALLOWED) == f"ok host-allowed {world.a.guest_ip}"


def test_the_internet_cannot_open_connections_to_vms(world: World) -> None:
    sh("ip", "-n", world.internet, "route", "add", str(world.net.plan.pool), "via", UPLINK_IP)
    try:
        assert not tcp_connect(world.internet, world.b.guest_ip, 9000).startswith("ok")
    finally:
        sh("ip", "-n", world.internet, "route", "del", str(world.net.plan.pool))


# -- lifecycle: each test gets its own host namespace -----------------------------------------------------


@pytest.fixture
async def host_ns() -> AsyncIterator[str]:
    name = new_netns("life")
    yield name
    del_netns(name)


def our_taps(ns: str, net: HostNetwork) -> set[str]:
    return {name for name in links(ns) if net.plan.index_of(name) is not None}


def guest_elements(ns: str) -> int:
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "set", "bridge", "smith", "guests")
    import json

    for item in json.loads(out)["nftables"]:
        if "set" in item:
            return len(item["set"].get("elem", []))
    raise AssertionError("no guests set")


async def test_fifty_acquire_release_cycles_never_share_an_address(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(pool="10.77.0.0/28", netns=host_ns))  # 13 slots: reuse is forced
    rng = random.Random(7)
    live: dict[str, Slot] = {}
    seen_reuse = False
    released: set[str] = set()
    async with net:
        for cycle in range(50):
            for n in range(rng.randint(1, 4)):
                if len(live) < net.plan.capacity:
                    slot = await net.acquire(f"vm-{cycle}-{n}")
                    seen_reuse |= slot.guest_ip in released
                    live[f"vm-{cycle}-{n}"] = slot
            for vm_id in rng.sample(sorted(live), k=rng.randint(0, len(live))):
                slot = live.pop(vm_id)
                await net.release(slot)
                released.add(slot.guest_ip)
            slots = list(live.values())
            assert len({s.guest_ip for s in slots}) == len(slots)
            assert len({s.mac for s in slots}) == len(slots)
            assert len({s.tap for s in slots}) == len(slots)
            assert all(s.guest_ip != s.gateway_ip for s in slots)
            if cycle % 10 == 9:
                assert our_taps(host_ns, net) == {s.tap for s in slots}
                assert guest_elements(host_ns) == len(slots)
        assert seen_reuse
        assert net.live() == live
    assert links(host_ns) == ["lo"]


async def test_teardown_leaves_no_link_table_or_namespace(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(netns=host_ns))
    async with net:
        slots = await asyncio.gather(*(net.acquire(f"vm{i}") for i in range(6)))
        assert len({s.guest_ip for s in slots}) == len({s.tap for s in slots}) == 6
        assert {"smithbr0", *(s.tap for s in slots)} <= set(links(host_ns))
        assert set(nft_tables(host_ns)) == {"table bridge smith", "table inet smith"}
    assert links(host_ns) == ["lo"]
    assert nft_tables(host_ns) == []
    del_netns(host_ns)
    assert host_ns not in netns_list()


async def test_cleanup_removes_what_a_crashed_agent_left(host_ns: str) -> None:
    crashed = HostNetwork(NetworkConfig(netns=host_ns))
    await crashed.setup()
    for i in range(3):
        await crashed.acquire(f"vm{i}")
    # The agent dies here; a new one starts.
    fresh = HostNetwork(NetworkConfig(netns=host_ns))
    removed = await fresh.cleanup_leftovers()
    assert sorted(removed) == sorted(
        ["tap smt0", "tap smt1", "tap smt2", "nft table bridge smith", "nft table inet smith", "bridge smithbr0"]
    )
    assert links(host_ns) == ["lo"]
    assert nft_tables(host_ns) == []
    async with fresh:
        slot = await fresh.acquire("vm-new")
        assert slot.tap == "smt0"
        assert guest_elements(host_ns) == 1
    assert await fresh.cleanup_leftovers() == []


async def test_cleanup_while_running_spares_live_taps_and_rules(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(netns=host_ns))
    async with net:
        a = await net.acquire("a")
        b = await net.acquire("b")
        sh("ip", "-n", host_ns, "tuntap", "add", "dev", "smt9", "mode", "tap")
        sh("ip", "-n", host_ns, "tuntap", "add", "dev", "other0", "mode", "tap")
        assert await net.cleanup_leftovers() == ["tap smt9"]
        assert {a.tap, b.tap, "other0", "smithbr0"} <= set(links(host_ns))
        assert "smt9" not in links(host_ns)
        assert len(nft_tables(host_ns)) == 2
        sh("ip", "-n", host_ns, "link", "del", "other0")


async def test_failed_acquire_unwinds_and_names_the_command(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(netns=host_ns))
    async with net:
        sh("ip", "-n", host_ns, "link", "del", "smithbr0")  # someone removed our bridge
        with pytest.raises(VMError) as info:
            await net.acquire("vm1")
        assert "ip -n" in info.value.message and "-batch" in info.value.message
        assert our_taps(host_ns, net) == set()
        assert net.live() == {}
        await net.setup()  # setup brings the bridge back; vm1 may have a slot again
        slot = await net.acquire("vm1")
        assert slot.tap in links(host_ns)


async def test_setup_again_keeps_live_slots_admitted(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(netns=host_ns, host_tcp_ports=(1,)))
    async with net:
        slot = await net.acquire("vm1")
        await net.setup()
        assert guest_elements(host_ns) == 1
        assert slot.tap in links(host_ns)
        await net.release(slot)
        await net.release(slot)  # twice: a no-op
        assert guest_elements(host_ns) == 0


async def test_tap_owner_lets_an_unprivileged_vmm_open_the_tap(host_ns: str) -> None:
    net = HostNetwork(NetworkConfig(netns=host_ns, tap_owner=4242))
    async with net:
        slot = await net.acquire("vm1")
        detail = sh("ip", "-n", host_ns, "-d", "link", "show", "dev", slot.tap)
        assert "user 4242" in detail or "owner 4242" in detail
        assert "isolated on" in detail
        assert f"group {net.config.tap_group}" in detail


async def test_setup_in_a_missing_namespace_is_a_config_error() -> None:
    from smith.errors import ConfigError

    net = HostNetwork(NetworkConfig(netns="smtest-does-not-exist"))
    with pytest.raises(ConfigError, match="does not exist"):
        await net.setup()


async def test_the_agent_lifecycle_sets_up_and_tears_down(host_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.agent.network import host_network
    from smith.agent.settings import AgentSettings

    sh("ip", "-n", host_ns, "tuntap", "add", "dev", "smt4", "mode", "tap")  # a crashed agent's tap
    monkeypatch.setenv("SMITH_AGENT_NETWORK", "true")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_NETNS", host_ns)
    monkeypatch.setenv("SMITH_AGENT_NETWORK_HOST_PORTS", "8080")
    with pytest.raises(RuntimeError, match="agent crashed"):
        async with host_network(AgentSettings()) as net:
            assert net is not None
            assert "smt4" not in links(host_ns) and "smithbr0" in links(host_ns)
            await net.acquire("vm1")
            raise RuntimeError("agent crashed")
    assert links(host_ns) == ["lo"]
    assert nft_tables(host_ns) == []
    monkeypatch.setenv("SMITH_AGENT_NETWORK", "false")
    async with host_network(AgentSettings()) as off:
        assert off is None
