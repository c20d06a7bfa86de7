"""Where the VMs' address pool sits: never over a route the host already has, and apart from Docker's pools.

Docker hands out its networks from 172.17.0.0/16 ... 172.31.0.0/16 and 192.168.0.0/16 (in /20s) unless
``default-address-pools`` says otherwise; a pool there works until Docker creates a network over it. A pool that
overlaps a route the host has (a VPC subnet, a VPN) breaks both: refused at start.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from smith.adapters.firewall import Finding

DOCKER_POOLS = (*(f"172.{n}.0.0/16" for n in range(17, 32)), "192.168.0.0/16")


def pool_findings(pool: str, bridge: str, routes: Sequence[dict[str, Any]], docker: bool) -> list[Finding]:
    """``routes`` as ``ip -j route show`` gives them; ``docker``: Docker is installed on this host."""
    net = ipaddress.ip_network(pool, strict=False)
    found: list[Finding] = []
    for route in routes:
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dst == "default" or dev == bridge:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == net.version and other.overlaps(net):
            found.append(
                Finding(
                    "fail",
                    "address-pool",
                    f"the VMs' pool {pool} overlaps the host's route {dst} on {dev}",
                    "set SMITH_AGENT_NETWORK_POOL to a range no route uses",
                )
            )
    clash = [p for p in DOCKER_POOLS if ipaddress.ip_network(p).overlaps(net)]
    if docker and clash:
        found.append(
            Finding(
                "warn",
                "address-pool",
                f"the VMs' pool {pool} lies in Docker's default pool {clash[0]}: a new Docker network may take it",
                "set SMITH_AGENT_NETWORK_POOL outside 172.17.0.0/12 and 192.168.0.0/16, or Docker's "
                "default-address-pools in /etc/docker/daemon.json away from it",
            )
        )
    return found


def parse_routes(text: str) -> list[dict[str, Any]]:
    return list(json.loads(text or "[]"))
