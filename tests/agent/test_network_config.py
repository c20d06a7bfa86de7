"""Address plan, slot table, settings validation and the rules text: no root, no commands run."""

from __future__ import annotations

import pytest

from smith.adapters.network import Commands, HostNetwork, NetworkConfig, render_ruleset
from smith.domain.network import AddressPlan, SlotTable
from smith.domain.vms import Slot
from smith.errors import ConfigError, Conflict, InvalidInput, Unavailable, VMError


def test_slots_follow_from_their_index() -> None:
    plan = AddressPlan.parse("172.30.0.0/24", "smt")
    assert plan.capacity == 253
    assert str(plan.gateway) == "172.30.0.1"
    assert plan.slot(0) == Slot("smt0", "06:00:ac:1e:00:02", "172.30.0.2", "172.30.0.1", 24)
    last = plan.slot(252)
    assert last.tap == "smt252" and last.guest_ip == "172.30.0.254" and last.mac == "06:00:ac:1e:00:fe"
    assert last.netmask == "255.255.255.0"
    assert plan.gateway_mac == "06:00:ac:1e:00:01"
    with pytest.raises(InvalidInput):
        plan.slot(253)
    with pytest.raises(InvalidInput):
        plan.slot(-1)


def test_tap_names_are_recognised_exactly() -> None:
    plan = AddressPlan.parse("10.0.0.0/28", "smt")
    assert plan.index_of("smt0") == 0 and plan.index_of("smt12") == 12
    for other in ("smt", "smt13", "smt01", "smtx", "smithbr0", "eth0", "smt-1"):
        assert plan.index_of(other) is None, other


def test_every_tap_name_fits_in_an_interface_name() -> None:
    plan = AddressPlan.parse("10.0.0.0/16", "smithtap")
    assert len(plan.slot(plan.capacity - 1).tap) <= 15
    with pytest.raises(ConfigError, match="too long"):
        AddressPlan.parse("10.0.0.0/8", "smithtaps")  # 16,777,213 slots: 8 digits after the prefix


@pytest.mark.parametrize(
    ("pool", "prefix", "message"),
    [
        ("172.30.0.1/24", "smt", "CIDR"),
        ("not-a-net", "smt", "CIDR"),
        ("fd00::/64", "smt", "IPv4"),
        ("10.0.0.0/31", "smt", "too small"),
        ("10.0.0.0/24", "sm t", "letters"),
        ("10.0.0.0/24", "tap1", "digit"),
        ("10.0.0.0/24", "", "letters"),
    ],
)
def test_bad_pools_and_prefixes_are_config_errors(pool: str, prefix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AddressPlan.parse(pool, prefix)


def test_slot_table_never_hands_one_slot_to_two_vms_and_reuses_late() -> None:
    table = SlotTable(AddressPlan.parse("10.0.0.0/29", "smt"))  # 5 slots
    got = [table.allocate(f"vm{i}") for i in range(5)]
    assert got == [0, 1, 2, 3, 4]
    with pytest.raises(Unavailable) as full:
        table.allocate("vm5")
    assert full.value.retryable
    with pytest.raises(Conflict):
        table.allocate("vm1")
    table.free(1)
    table.free(1)  # twice: harmless
    assert table.allocate("vm5") == 1
    table.free(3)
    table.free(0)
    assert [table.allocate("x"), table.allocate("y")] == [3, 0]  # released order, oldest first
    assert len(set(table.live())) == len(table.live()) == 5


@pytest.mark.parametrize("vm_id", ["", "   "])
def test_an_empty_vm_id_is_refused(vm_id: str) -> None:
    table = SlotTable(AddressPlan.parse("10.0.0.0/29", "smt"))
    with pytest.raises(InvalidInput):
        table.allocate(vm_id)
    assert table.live() == {}


def test_config_problems_name_each_bad_value() -> None:
    config = NetworkConfig(
        pool="10.0.0.0/33",
        bridge="a-bridge-name-that-is-too-long",
        uplink="bad name",
        host_tcp_ports=(0, 8080),
        host_udp_ports=(70000,),
        deny_egress=("nonsense", "fd00::/8"),
        netns="../escape",
        tap_owner=-1,
    )
    problems = " | ".join(config.problems())
    for expected in ("10.0.0.0/33", "too long", "'bad name'", "port 0", "port 70000", "nonsense", "IPv4", "netns"):
        assert expected in problems, expected
    assert "uid -1" in problems
    with pytest.raises(ConfigError, match="network settings"):
        HostNetwork(config)
    assert NetworkConfig().problems() == []


def test_bridge_must_not_look_like_a_tap() -> None:
    assert any("tap prefix" in p for p in NetworkConfig(bridge="smt0", tap_prefix="smt").problems())


def test_ruleset_says_what_the_docs_say() -> None:
    config = NetworkConfig(uplink="eth0", host_tcp_ports=(8080, 8081, 8080), host_udp_ports=(53,))
    plan = config.validated()
    rules = render_ruleset(config, plan, [plan.slot(0)])
    assert "delete table inet smith" in rules and "delete table bridge smith" in rules  # atomic replace
    assert "elements = { 8080, 8081 }" in rules and "elements = { 53 }" in rules
    assert "169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16" in rules  # the LAN and metadata are denied
    assert 'ip daddr @allow_egress oifname "eth0" accept\n    ip daddr @deny_egress goto refuse' in rules
    assert 'elements = { "smt0" . 06:00:ac:1e:00:02 . 172.30.0.2 }' in rules
    assert "ip daddr 172.30.0.1 tcp dport @host_tcp accept" in rules
    assert 'ip saddr 172.30.0.0/24 oifname "eth0" masquerade' in rules
    assert 'iifname "smt*" drop' in rules
    anywhere = render_ruleset(NetworkConfig(), NetworkConfig().validated())
    assert 'oifname != "smithbr0" masquerade' in anywhere
    assert "type inet_service\n" in anywhere  # empty port sets carry no elements line


async def test_a_failed_command_is_a_vm_error_naming_it() -> None:
    commands = Commands(netns="smtest-nowhere", ip_bin="false")
    with pytest.raises(VMError, match=r"`\S*false -n smtest-nowhere -j link show` failed \(exit 1\)"):
        await commands.links()


async def test_a_missing_binary_is_a_config_error_naming_the_package() -> None:
    commands = Commands(nft_bin="/nonexistent/nft")
    with pytest.raises(ConfigError, match="install nftables"):
        commands.require()


async def test_acquire_before_setup_is_refused_and_loses_nothing() -> None:
    net = HostNetwork(NetworkConfig())
    with pytest.raises(VMError, match="not set up"):
        await net.acquire("vm1")
    assert net.live() == {}


async def test_releasing_a_foreign_or_altered_slot_is_invalid_input() -> None:
    net = HostNetwork(NetworkConfig())
    with pytest.raises(InvalidInput, match="not a slot"):
        await net.release(Slot("eth0", "06:00:00:00:00:01", "10.0.0.2", "10.0.0.1", 24))
    with pytest.raises(InvalidInput, match="does not match"):
        await net.release(Slot("smt0", "06:00:00:00:00:01", "172.30.0.9", "172.30.0.1", 24))
    await net.release(net.plan.slot(0))  # ours but free: a no-op, no command runs


def test_agent_settings_build_the_network_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.agent.network import network_config, network_problems
    from smith.agent.settings import AgentSettings

    monkeypatch.setenv("SMITH_AGENT_NETWORK", "true")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_HOST_PORTS", "8080, 8081")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_DENY", '["169.254.0.0/16", "10.0.0.0/8"]')
    monkeypatch.setenv("SMITH_AGENT_NETWORK_UPLINK", "eth0")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_TAP_USER", "0")
    config = network_config(AgentSettings())
    assert config.host_tcp_ports == (8080, 8081)
    assert config.deny_egress == ("169.254.0.0/16", "10.0.0.0/8")
    assert config.uplink == "eth0" and config.tap_owner == 0
    monkeypatch.setenv("SMITH_AGENT_NETWORK_POOL", "10.1.2.3/24")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_TAP_USER", "no-such-user-here")
    problems = network_problems(AgentSettings())
    assert any("no such user" in p for p in problems)
    monkeypatch.setenv("SMITH_AGENT_NETWORK_TAP_USER", "0")
    assert any("10.1.2.3/24" in p for p in AgentSettings().problems())


def test_agent_settings_refuse_a_non_numeric_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from smith.agent.settings import AgentSettings

    monkeypatch.setenv("SMITH_AGENT_NETWORK_HOST_PORTS", "8080,cache")
    with pytest.raises(ValidationError, match="agent_network_host_ports"):
        AgentSettings()


def test_platform_ports_are_never_opened_to_vms(monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.agent.network import network_problems
    from smith.agent.settings import AgentSettings

    monkeypatch.setenv("SMITH_AGENT_NETWORK", "true")
    monkeypatch.setenv("SMITH_CONTROL_URL", "http://10.0.0.5:8080")
    monkeypatch.setenv("SMITH_AGENT_LOGS_URL", "http://10.0.0.5:8070")
    monkeypatch.setenv("SMITH_AGENT_NETWORK_HOST_PORTS", "8081,8080,8070,6379")
    problems = network_problems(AgentSettings())
    for port in (8080, 8070, 6379):
        assert any(f"host port {port} is" in p for p in problems), port
    assert not any("host port 8081 is" in p for p in problems)  # the cache


def test_the_lan_is_denied_by_default_and_holes_are_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.agent.network import network_config
    from smith.agent.settings import AgentSettings

    config = network_config(AgentSettings())
    for lan in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"):
        assert lan in config.deny_egress
    assert config.allow_egress == ()
    monkeypatch.setenv("SMITH_AGENT_NETWORK_DENY", "10.0.0.0/8,10.1.0.0/16,10.0.0.0/8")  # nested and repeated
    monkeypatch.setenv("SMITH_AGENT_NETWORK_ALLOW", "10.1.2.3")
    config = network_config(AgentSettings())
    rules = render_ruleset(config, config.validated())
    assert "elements = { 10.0.0.0/8 }" in rules and "elements = { 10.1.2.3/32 }" in rules
    assert "allow_egress 'nope'" in " ".join(NetworkConfig(allow_egress=("nope",)).problems())
