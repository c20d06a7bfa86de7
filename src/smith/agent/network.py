"""The host agent's side of VM networking: settings -> HostNetwork, and the start-up/shut-down lifecycle.

``host_network(settings)`` is what the agent enters at start-up when ``SMITH_AGENT_NETWORK=true``: it removes
what a crashed agent left (taps, tables, bridge), sets the bridge and rules up, yields the ``Network`` the VM
backends acquire slots from, and tears everything down on every exit path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from smith.adapters.firewall import Firewall
from smith.adapters.netcheck import parse_routes, pool_findings
from smith.adapters.network import HostNetwork, NetworkConfig, uid_of
from smith.adapters.resolver import blocked, guest_resolver, usable_by_guest
from smith.agent.settings import AgentSettings
from smith.errors import ConfigError, SmithError
from smith.logging import get_logger

log = get_logger("smith.agent.network")


def network_config(settings: AgentSettings) -> NetworkConfig:
    return NetworkConfig(
        pool=settings.agent_network_pool,
        bridge=settings.agent_network_bridge,
        tap_prefix=settings.agent_network_tap_prefix,
        uplink=settings.agent_network_uplink,
        host_tcp_ports=tuple(settings.agent_network_host_ports),
        host_udp_ports=tuple(settings.agent_network_host_udp_ports),
        deny_egress=tuple(settings.agent_network_deny),
        allow_egress=tuple(settings.agent_network_allow),
        netns=settings.agent_network_netns,
        tap_owner=uid_of(settings.agent_network_tap_user),
    )


def network_problems(settings: AgentSettings) -> list[str]:
    """Settings problems for `smith config check agent` (no command runs)."""
    try:
        found = network_config(settings).problems()
    except SmithError as exc:
        return [exc.message]
    if os.geteuid() != 0:
        found.append("SMITH_AGENT_NETWORK needs root (CAP_NET_ADMIN) to create the bridge, taps and nftables rules")
    if not settings.agent_network_host_ports:
        found.append("SMITH_AGENT_NETWORK_HOST_PORTS is empty: VMs cannot reach the cache on this host")
    found += resolver_problems(settings)
    for port, what in forbidden_ports(settings).items():
        if port in settings.agent_network_host_ports or port in settings.agent_network_host_udp_ports:
            found.append(f"host port {port} is {what}: a job must never reach it; take it out of the host ports")
    return found


def resolver_problems(settings: AgentSettings) -> list[str]:
    """The guests' resolver: there is one, a guest can reach it, and the egress rules let its queries out."""
    dns = guest_resolver(settings.agent_network_dns)
    if dns is None:
        return ["no DNS resolver for the VMs: the host names only a local stub; set SMITH_AGENT_NETWORK_DNS"]
    try:
        if not usable_by_guest(dns):
            return [f"SMITH_AGENT_NETWORK_DNS={dns} is on the host's loopback: a VM cannot reach it"]
        if blocked(dns, settings.agent_network_deny, settings.agent_network_allow):
            return [f"the VMs' resolver {dns} is in a denied range: add SMITH_AGENT_NETWORK_ALLOW={dns}/32"]
    except ValueError:
        return [f"SMITH_AGENT_NETWORK_DNS={dns!r} is not an IP address"]
    return []


def forbidden_ports(settings: AgentSettings) -> dict[int, str]:
    """Host ports a VM must never be let in on: the platform's own services (jobs reach only the cache)."""
    ports = {6379: "Valkey's", 8123: "ClickHouse's HTTP port", 9000: "ClickHouse's native port"}
    for url, what in ((settings.control_url, "the control plane's"), (settings.logs_url, "the log service's")):
        parsed = urlsplit(url) if url else None
        if parsed is not None and parsed.hostname:
            ports[parsed.port or (443 if parsed.scheme == "https" else 80)] = what
    return ports


def docker_installed() -> bool:
    return any(os.path.exists(p) for p in ("/var/run/docker.sock", "/etc/docker"))


async def check_pool(net: HostNetwork) -> None:
    """Refuse a pool over one of the host's routes; warn when it lies in Docker's default pools."""
    routes = parse_routes(await net.commands.ip("-j", "route", "show"))
    found = pool_findings(net.config.pool, net.config.bridge, routes, docker_installed())
    for finding in found:
        if finding.level == "warn":
            log.warning(finding.message, fix=finding.fix)
    failing = [f"{f.message} ({f.fix})" for f in found if f.level == "fail"]
    if failing:
        raise ConfigError("; ".join(failing))


@asynccontextmanager
async def host_network(settings: AgentSettings) -> AsyncIterator[HostNetwork | None]:
    """Clean leftovers, set the host network up, yield it, tear it down. Yields None when networking is off."""
    if not settings.agent_network:
        yield None
        return
    net = HostNetwork(network_config(settings))
    await check_pool(net)
    async with net:
        firewall = Firewall(net, settings.agent_network_host_ports)
        await firewall.ensure()  # Docker's accepts in; ufw/firewalld/other drops refuse the start, with the fix
        watch = asyncio.ensure_future(firewall.watch(settings.agent_network_check_seconds))
        try:
            yield net
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            log.info("network_stopping", live_slots=len(net.live()))
