"""The resolver a guest is told to use: never the host's loopback stub, nor a private or link-local address."""

from __future__ import annotations

from pathlib import Path

from smith.adapters.resolver import FALLBACK, guest_resolver


def test_the_systemd_stub_is_skipped_for_its_upstream(tmp_path: Path) -> None:
    stub = tmp_path / "resolv.conf"
    stub.write_text("# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 192.168.1.1\nnameserver fe80::1\nnameserver 9.9.9.9\n")
    assert guest_resolver(files=(stub, upstream)) == "9.9.9.9"


def test_without_a_public_resolver_the_fallback_and_a_setting_wins(tmp_path: Path) -> None:
    only_private = tmp_path / "resolv.conf"
    only_private.write_text("nameserver 10.0.0.2\nnameserver 169.254.169.253\n")
    assert guest_resolver(files=(only_private, tmp_path / "missing")) == FALLBACK
    assert guest_resolver("10.0.0.2", files=(only_private,)) == "10.0.0.2"
