"""Items 8, 16 and 20: other firewalls, a flushed ruleset and a lower uplink MTU, with real packets (root only).

Runs on test_network's world (a host namespace with Smith's bridge, an "internet" behind its uplink, two VMs):
each test adds what Docker, ufw or firewalld would add to the host namespace's ruleset, and removes it after.
Run under the shared lock: ``flock /tmp/smith-net.lock uv run pytest tests/agent/test_network_host.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from smith.adapters.firewall import Firewall, Ruleset, check
from smith.adapters.netcheck import pool_findings
from smith.errors import ConfigError
from tests.agent.netns import run_in, sh, skip_unless_root, socket_in, tcp_connect
from tests.agent.test_network import ALLOWED, INTERNET_IP, UPLINK_IP, World, world  # noqa: F401  (the fixture)

pytestmark = skip_unless_root()

DOCKER = """
table ip filter {
  chain DOCKER-USER {
    counter return
  }
  chain FORWARD {
    type filter hook forward priority filter; policy drop;
    jump DOCKER-USER
  }
}
"""
UFW = """
table ip filter {
  chain ufw-user-forward {
  }
  chain FORWARD {
    type filter hook forward priority filter; policy drop;
    jump ufw-user-forward
  }
  chain INPUT {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
  }
}
"""
FIREWALLD = """
table inet firewalld {
  chain filter_FORWARD {
    type filter hook forward priority filter + 10; policy accept;
    ct state established,related accept
    reject with icmpx admin-prohibited
  }
}
"""
OTHER = """
table inet hfw-site {
  chain site_forward {
    type filter hook forward priority 0; policy drop;
  }
}
"""


def nft(ns: str, script: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def foreign(world: World) -> Iterator[World]:  # noqa: F811
    """Whatever a test adds besides Smith's tables is removed after it; Smith's are put back."""
    yield world
    for family, name in asyncio.run(world.net.commands.tables()):
        if name != "smith":
            sh("ip", "netns", "exec", world.host, "nft", "delete", "table", family, name)
    asyncio.run(world.net.setup())


def internet(w: World) -> str:
    return tcp_connect(w.vm_a, INTERNET_IP, 80)


def test_dockers_forward_drop_gets_smiths_accepts_in_docker_user(foreign: World) -> None:
    nft(foreign.host, DOCKER)
    assert internet(foreign) == "timeout"  # Smith's table accepts it; Docker's FORWARD drops it anyway
    firewall = Firewall(foreign.net, (ALLOWED,))
    asyncio.run(firewall.ensure())
    assert internet(foreign) == f"ok internet {UPLINK_IP}"
    asyncio.run(firewall.ensure())  # again: nothing is added twice
    rules = json.loads(
        sh("ip", "netns", "exec", foreign.host, "nft", "-j", "list", "chain", "ip", "filter", "DOCKER-USER")
    )
    assert sum(1 for item in rules["nftables"] if item.get("rule", {}).get("comment") == "smith") == 2
    # Smith's own rules still hold behind the accept: VM B stays out of reach of VM A.
    assert tcp_connect(foreign.vm_a, foreign.b.guest_ip, 9000) != "ok vm-b " + foreign.a.guest_ip


def test_ufw_and_firewalld_refuse_the_start_naming_the_fix(foreign: World) -> None:
    firewall = Firewall(foreign.net, (ALLOWED,))
    nft(foreign.host, UFW)
    with pytest.raises(ConfigError) as ufw:
        asyncio.run(firewall.ensure())
    assert "ufw route allow in on smithbr0" in ufw.value.message and f"port {ALLOWED}" in ufw.value.message
    sh("ip", "netns", "exec", foreign.host, "nft", "delete", "table", "ip", "filter")
    nft(foreign.host, FIREWALLD)
    with pytest.raises(ConfigError) as firewalld:
        asyncio.run(firewall.ensure())
    assert "firewall-cmd --permanent --zone=trusted --add-interface=smithbr0" in firewalld.value.message
    assert internet(foreign) != f"ok internet {UPLINK_IP}"  # it really would have dropped the jobs' traffic
    sh("ip", "netns", "exec", foreign.host, "nft", "delete", "table", "inet", "firewalld")
    nft(foreign.host, OTHER)
    with pytest.raises(ConfigError) as other:
        asyncio.run(firewall.ensure())
    assert "table inet hfw-site chain site_forward drops forward traffic" in other.value.message


def test_a_flushed_ruleset_is_put_back_by_the_watch_with_live_vms_admitted(foreign: World) -> None:
    firewall = Firewall(foreign.net, (ALLOWED,))

    async def flush_and_watch() -> None:
        watch = asyncio.ensure_future(firewall.watch(interval=0.05))
        try:
            sh("ip", "netns", "exec", foreign.host, "nft", "flush", "ruleset")  # what nftables.service reload does
            while ("inet", "smith") not in await foreign.net.commands.tables():
                await asyncio.sleep(0.05)
        finally:
            watch.cancel()

    asyncio.run(flush_and_watch())
    assert internet(foreign) == f"ok internet {UPLINK_IP}"  # NAT is back, and VM A's slot is still admitted
    assert tcp_connect(foreign.vm_a, foreign.b.guest_ip, 9000) != "ok vm-b " + foreign.a.guest_ip


def test_findings_on_a_clean_host_are_empty() -> None:
    ruleset = Ruleset.parse(
        json.dumps(
            {
                "nftables": [
                    {"table": {"family": "inet", "name": "smith"}},
                    {"table": {"family": "bridge", "name": "smith"}},
                ]
            }
        )
    )
    assert check(ruleset, "smithbr0", (8090,)) == []


def serve_bulk(ns: str, port: int, size: int) -> threading.Thread:
    """One connection in ``ns`` on ``port``: sends ``size`` bytes and closes."""
    listener = run_in(ns, lambda: socket.create_server((INTERNET_IP, port)))

    def serve() -> None:
        with listener:
            listener.settimeout(10)
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"x" * size)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def download(ns: str, port: int) -> int:
    sock = socket_in(ns)
    sock.settimeout(8)  # a loaded machine (CI) can stall a few seconds; the black hole stalls for good
    got = 0
    try:
        sock.connect((INTERNET_IP, port))
        while chunk := sock.recv(65536):
            got += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    return got


def test_a_lower_uplink_mtu_does_not_black_hole_downloads(foreign: World) -> None:
    # The host's uplink takes 1400-byte packets while the far side sends 1500: a path MTU black hole (no ICMP).
    # Veth passes GSO bursts of any size: the far side sends plain frames, which veth drops when too big.
    sh("ip", "-n", foreign.host, "link", "set", "up0", "mtu", "1400")
    sh("ip", "-n", foreign.internet, "link", "set", "wan0", "gso_max_size", "1500", "gso_max_segs", "1")
    try:
        asyncio.run(foreign.net.setup())
        bridge = json.loads(sh("ip", "-n", foreign.host, "-j", "link", "show", "dev", "smithbr0"))[0]
        assert bridge["mtu"] == 1400  # copied from the uplink
        server = serve_bulk(foreign.internet, 8081, 200_000)
        assert download(foreign.vm_a, 8081) == 200_000  # the VM's SYN had its MSS clamped to the route's MTU
        server.join()
    finally:
        sh("ip", "-n", foreign.host, "link", "set", "up0", "mtu", "1500")
        sh("ip", "-n", foreign.internet, "link", "set", "wan0", "gso_max_size", "65536", "gso_max_segs", "65535")


def test_a_pool_over_a_host_route_is_refused_and_dockers_pools_are_named() -> None:
    routes = [
        {"dst": "default", "gateway": "10.0.0.1", "dev": "eth0"},
        {"dst": "10.0.0.0/16", "dev": "eth0"},
        {"dst": "172.30.0.0/24", "dev": "smithbr0"},  # our own bridge's, from an earlier run
    ]
    assert pool_findings("172.30.0.0/24", "smithbr0", routes, docker=False) == []
    clash = pool_findings("10.0.8.0/24", "smithbr0", routes, docker=False)
    assert [f.level for f in clash] == ["fail"] and "10.0.0.0/16 on eth0" in clash[0].message
    docker = pool_findings("172.30.0.0/24", "smithbr0", routes, docker=True)
    assert [f.level for f in docker] == ["warn"] and "172.30.0.0/16" in docker[0].message


def test_the_agent_refuses_a_pool_over_a_route_of_its_namespace(foreign: World) -> None:
    from smith.agent.network import check_pool

    sh("ip", "-n", foreign.host, "route", "add", "172.30.0.128/25", "via", INTERNET_IP)
    try:
        with pytest.raises(ConfigError) as err:
            asyncio.run(check_pool(foreign.net))
        assert "overlaps the host's route 172.30.0.128/25 on up0" in err.value.message
    finally:
        sh("ip", "-n", foreign.host, "route", "del", "172.30.0.128/25")
