"""The DNS resolver a guest is told to use: the configured one, else the host's real upstream.

A guest image has no resolv.conf of its own; the guest's init writes one from ``smith.dns=`` on the kernel
command line. The host's own ``/etc/resolv.conf`` often names a stub that only listens on the host's loopback
(systemd-resolved's 127.0.0.53, dnsmasq's 127.0.1.1): useless to a guest. Then the upstream comes from
systemd-resolved's ``/run/systemd/resolve/resolv.conf``, which lists the real servers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

HOST_FILES = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))


def nameservers(path: Path) -> list[str]:
    """The IPv4 nameservers a resolv.conf lists, in order (unreadable file: none)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address):
                found.append(str(address))
    return found


def usable_by_guest(address: str) -> bool:
    """A guest cannot reach the host's loopback (127.0.0.53 and friends), nor an unspecified address."""
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)


def guest_resolver(configured: str | None = None, files: Sequence[Path] = HOST_FILES) -> str | None:
    """The configured resolver, else the first host upstream a guest can reach, else None (say so at start)."""
    if configured:
        return configured
    for path in files:
        for address in nameservers(path):
            if usable_by_guest(address):
                return address
    return None


def blocked(address: str, deny: Sequence[str], allow: Sequence[str]) -> bool:
    """Whether the guests' egress rules drop traffic to this resolver (a LAN or VPC resolver in a private range)."""
    ip = ipaddress.ip_address(address)

    def within(ranges: Sequence[str]) -> bool:
        return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in ranges)

    return within(deny) and not within(allow)


# Told to a guest when the host names no resolver a guest can reach (a warning says so at start): a public one
# works on most networks; set SMITH_AGENT_NETWORK_DNS where outbound DNS must stay inside.
FALLBACK = "1.1.1.1"
