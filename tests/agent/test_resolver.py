"""Guests get a DNS resolver (QEMU and Firecracker): never the host's loopback stub."""

from __future__ import annotations

from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.adapters.resolver import blocked, guest_resolver, nameservers
from smith.domain.vms import Slot, VMShape


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_systemd_resolved_stub_is_skipped_for_its_upstream(tmp_path: Path) -> None:
    stub = write(tmp_path / "resolv.conf", "# managed by resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\n")
    upstream = write(tmp_path / "upstream.conf", "nameserver 127.0.0.1\nnameserver fe80::1\nnameserver 192.0.2.53\n")
    assert nameservers(stub) == ["127.0.0.53"]
    assert guest_resolver(None, [stub, upstream]) == "192.0.2.53"
    assert guest_resolver(None, [stub, tmp_path / "missing"]) is None
    assert guest_resolver("198.51.100.1", [stub, upstream]) == "198.51.100.1"


def test_a_resolver_in_a_denied_range_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from smith.agent.network import resolver_problems
    from smith.agent.settings import AgentSettings

    assert blocked("10.0.0.2", ["10.0.0.0/8"], []) and not blocked("10.0.0.2", ["10.0.0.0/8"], ["10.0.0.2/32"])
    monkeypatch.setenv("SMITH_AGENT_NETWORK_DNS", "10.0.0.2")
    assert any("SMITH_AGENT_NETWORK_ALLOW=10.0.0.2/32" in p for p in resolver_problems(AgentSettings()))
    monkeypatch.setenv("SMITH_AGENT_NETWORK_ALLOW", "10.0.0.2/32")
    assert resolver_problems(AgentSettings()) == []
    monkeypatch.setenv("SMITH_AGENT_NETWORK_DNS", "127.0.0.53")
    assert any("loopback" in p for p in resolver_problems(AgentSettings()))


def test_a_networked_qemu_guest_is_told_its_resolver(tmp_path: Path) -> None:
    kernel = write(tmp_path / "vmlinuz", "not a kernel")
    vmm = QemuVMM(tmp_path / "vms", QemuConfig(kernel=kernel, qemu_bin="/bin/true", dns="192.0.2.53"))
    slot = Slot("smt0", "06:00:00:00:00:02", "172.30.0.2", "172.30.0.1", 24)
    argv = vmm.command(tmp_path, VMShape("x", 1, 256), "tcg", slot, None)
    append = argv[argv.index("-append") + 1]
    assert "smith.ip=172.30.0.2/24 smith.gw=172.30.0.1 smith.dns=192.0.2.53" in append


def test_firecracker_guests_get_the_setting_else_the_host_upstream_else_the_fallback(tmp_path: Path) -> None:
    from smith.adapters.resolver import FALLBACK

    stub = write(tmp_path / "resolv.conf", "nameserver 127.0.0.53\n")
    private = write(tmp_path / "vpc.conf", "nameserver 10.0.0.2\n")
    assert (guest_resolver(None, [stub]) or FALLBACK) == FALLBACK
    assert guest_resolver(None, [stub, private]) == "10.0.0.2"  # a VPC resolver: allowed through by the settings
