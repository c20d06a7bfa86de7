"""The DNS resolver a guest is told to use (``smith.dns=`` on its kernel command line).

Never the host's loopback stub (systemd-resolved's 127.0.0.53 means the guest itself), nor a private or
link-local address (the guest network denies those ranges by default): the first public resolver the host
uses (``/etc/resolv.conf``, then systemd-resolved's upstream list), else a public fallback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

RESOLV_FILES = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))
FALLBACK = "1.1.1.1"


def nameservers(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1])
    return found


def guest_resolver(configured: str = "", files: tuple[Path, ...] = RESOLV_FILES) -> str:
    """``configured`` when set, else the host's first public IPv4 resolver, else :data:`FALLBACK`."""
    if configured:
        return configured
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for server in nameservers(text):
            try:
                address = ipaddress.ip_address(server)
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv4Address) and address.is_global:
                return server
    return FALLBACK
