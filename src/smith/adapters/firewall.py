"""Other firewalls on the host, and Smith's own tables kept in place.

nftables runs every base chain on a hook, and a drop in any of them is final: Smith's ``inet smith`` table
accepting a VM's traffic does not help when another table drops it. What the common hosts have:

* Docker: ``ip filter`` chain ``FORWARD`` with policy drop (forwarded traffic of any other bridge dies). Docker's
  documented place for the operator's rules is its ``DOCKER-USER`` chain, jumped to first: Smith inserts two
  accepts there (from its bridge; replies to it), tagged ``smith``, and puts them back if they go.
* ufw: ``ufw-*`` chains in ``ip filter``; default forward policy drop and input drop (the VMs' gateway ports).
  ufw rewrites its chains on every reload, so Smith does not edit them: it refuses to start and names the
  ``ufw route allow`` / ``ufw allow`` commands.
* firewalld (RHEL's default): table ``inet firewalld`` rejects forwarded traffic of interfaces in no zone that
  allows it; Smith refuses and names ``firewall-cmd --zone=trusted --add-interface=<bridge>``.
* any other table with a forward (or input, when VMs have host ports) base chain whose policy is drop and which
  never names Smith's bridge: refused, naming the table and chain.
* ``nftables.service`` reload (``flush ruleset``) removes Smith's own tables: ``watch()`` finds them gone and
  sets them up again, with every live VM's slot.

``check`` reads ``nft -j list ruleset`` (in the agent's namespace) and returns findings; ``ensure`` applies the
Docker accepts and raises ``ConfigError`` naming every firewall that would still drop a VM's traffic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from smith.errors import ConfigError, SmithError
from smith.logging import get_logger

log = get_logger("smith.firewall")

TAG = "smith"
Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    level: Level
    name: str
    message: str
    fix: str = ""
    commands: tuple[str, ...] = ()  # nft commands that fix it (Smith runs them itself)


@dataclass
class Ruleset:
    """``nft -j list ruleset``, indexed: tables, base chains (hook, policy), rules per chain."""

    tables: set[tuple[str, str]] = field(default_factory=set)
    chains: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Ruleset:
        out = cls()
        for item in json.loads(text or "{}").get("nftables", []):
            if "table" in item:
                out.tables.add((item["table"]["family"], item["table"]["name"]))
            elif "chain" in item:
                c = item["chain"]
                out.chains[(c["family"], c["table"], c["name"])] = c
            elif "rule" in item:
                r = item["rule"]
                out.rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
        return out

    def names(self, table: tuple[str, str], word: str) -> bool:
        """Whether a rule of this table names ``word`` (an interface name, as a quoted JSON string)."""
        needle = json.dumps(word)
        return any(
            needle in json.dumps(rule.get("expr", []))
            for (family, name, _), rules in self.rules.items()
            if (family, name) == table
            for rule in rules
        )

    def dropping(self, hook: str) -> list[tuple[str, str, str]]:
        """Base chains on ``hook`` (forward, input) whose policy is drop, outside Smith's tables."""
        return [
            key
            for key, chain in self.chains.items()
            if chain.get("hook") == hook and chain.get("policy") == "drop" and key[1] != TAG
        ]


def docker_commands(bridge: str) -> tuple[str, ...]:
    quoted = json.dumps(bridge)
    return (
        f'insert rule ip filter DOCKER-USER oifname {quoted} ct state established,related accept comment "{TAG}"',
        f'insert rule ip filter DOCKER-USER iifname {quoted} accept comment "{TAG}"',
    )


def check(rs: Ruleset, bridge: str, host_ports: Sequence[int] = ()) -> list[Finding]:
    """What would drop a VM's traffic besides Smith's own rules, and whether Smith's tables are in place."""
    found: list[Finding] = []
    if ("inet", TAG) not in rs.tables or ("bridge", TAG) not in rs.tables:
        found.append(Finding("fail", "smith-tables", "Smith's nftables tables are missing (a flushed ruleset?)"))
    handled: set[tuple[str, str]] = set()
    docker_user = rs.rules.get(("ip", "filter", "DOCKER-USER"), [])
    if ("ip", "filter", "DOCKER-USER") in rs.chains:
        handled.add(("ip", "filter"))
        ours = [r for r in docker_user if r.get("comment") == TAG and json.dumps(bridge) in json.dumps(r["expr"])]
        if len(ours) >= 2:
            found.append(Finding("ok", "docker", f"Docker: DOCKER-USER accepts {bridge}'s traffic"))
        else:
            found.append(
                Finding(
                    "warn",
                    "docker",
                    f"Docker's FORWARD chain drops {bridge}'s traffic; Smith inserts accepts in DOCKER-USER",
                    commands=docker_commands(bridge),
                )
            )
    ufw = any(key[:2] == ("ip", "filter") and key[2].startswith("ufw-") for key in rs.chains)
    if ufw:
        handled.add(("ip", "filter"))
        if not rs.names(("ip", "filter"), bridge):
            fix = f"ufw route allow in on {bridge}; ufw route allow out on {bridge}"
            fix += "".join(f"; ufw allow in on {bridge} to any port {p}" for p in host_ports)
            found.append(Finding("fail", "ufw", f"ufw drops {bridge}'s forwarded traffic and its host ports", fix))
        else:
            found.append(Finding("ok", "ufw", f"ufw has rules for {bridge}"))
    if ("inet", "firewalld") in rs.tables:
        handled.add(("inet", "firewalld"))
        if not rs.names(("inet", "firewalld"), bridge):
            fix = f"firewall-cmd --permanent --zone=trusted --add-interface={bridge} && firewall-cmd --reload"
            found.append(Finding("fail", "firewalld", f"firewalld rejects {bridge}'s traffic (it is in no zone)", fix))
        else:
            found.append(Finding("ok", "firewalld", f"firewalld has {bridge} in a zone"))
    hooks = ["forward", *(["input"] if host_ports else [])]
    for hook in hooks:
        for family, table, chain in rs.dropping(hook):
            if (family, table) in handled or rs.names((family, table), bridge):
                continue
            found.append(
                Finding(
                    "fail",
                    f"{family}-{table}",
                    f"table {family} {table} chain {chain} drops {hook} traffic and never names {bridge}",
                    f"add an accept for iifname {bridge} (and oifname {bridge} ct state established,related) to it",
                )
            )
    return found


class Firewall:
    """Applies the fixes Smith may make, refuses what it may not, and keeps its tables in place."""

    def __init__(self, network: Any, host_ports: Sequence[int] = ()) -> None:
        self.network = network  # a HostNetwork: its commands (in its namespace), its bridge, setup()
        self.bridge: str = network.config.bridge
        self.host_ports = tuple(host_ports)

    async def findings(self) -> list[Finding]:
        ruleset = Ruleset.parse(await self.network.commands.nft("-j", "list", "ruleset"))
        return check(ruleset, self.bridge, self.host_ports)

    async def ensure(self) -> list[Finding]:
        """Put Smith's tables back if gone, insert the Docker accepts, and raise for what still drops traffic."""
        found = await self.findings()
        if any(f.name == "smith-tables" for f in found):
            log.warning("smith's nftables tables were gone (ruleset flushed?); setting them up again")
            await self.network.setup()
        fixed = False
        for finding in found:
            for command in finding.commands:
                await self.network.commands.nft(command)
                fixed = True
        if fixed:
            log.warning("inserted accepts for Smith's bridge into Docker's DOCKER-USER chain", bridge=self.bridge)
        failing = [f for f in await self.findings() if f.level == "fail"]
        if failing:
            raise ConfigError(
                "a host firewall would drop the VMs' traffic: "
                + "; ".join(f"{f.message} (fix: {f.fix})" for f in failing)
            )
        return found

    async def watch(self, interval: float = 30.0) -> None:
        """Every ``interval`` seconds: Smith's tables and the Docker accepts back in place if they went."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.ensure()
            except SmithError as exc:
                log.error("host firewall check failed", error=exc.message)
