"""`smith assets fetch`: listed files downloaded and checked; offline, the kernel from Debian's package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smith.cli import app
from smith.errors import ConfigError
from smith.images.build import find_inputs
from tests.rootfs.support import RangeServer, sha256


def hexdigest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_listed_assets_are_fetched_and_checked(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    server = RangeServer(data, cut_at=100_000)
    with server.serve() as url:
        listing = tmp_path / "assets.yaml"
        listing.write_text(yaml.safe_dump({"assets": [{"name": "vmlinux", "url": url, "sha256": hexdigest(data)}]}))
        result = CliRunner().invoke(app, ["assets", "fetch", str(tmp_path / "out"), "--list", str(listing), "--json"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "vmlinux").read_bytes() == data
        recorded = json.loads((tmp_path / "out" / "assets.json").read_text())
        assert recorded["vmlinux"] == {"source": url, "sha256": hexdigest(data)}
        listing.write_text(yaml.safe_dump({"assets": [{"name": "rootfs.ext4", "url": url, "sha256": "1" * 64}]}))
        result = CliRunner().invoke(app, ["assets", "fetch", str(tmp_path / "out"), "--list", str(listing)])
    assert result.exit_code == 1 and "refused" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["assets.json", "vmlinux"]


def test_offline_the_debian_kernel_is_unpacked(tmp_path: Path) -> None:
    try:
        find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no Debian kernel here: {exc.message}")
    result = CliRunner().invoke(app, ["assets", "fetch", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    vmlinux = tmp_path / "out" / "vmlinux"
    assert vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert json.loads(result.output)["vmlinux"]["sha256"] == sha256(vmlinux)


def test_a_bad_list_is_one_line(tmp_path: Path) -> None:
    listing = tmp_path / "assets.yaml"
    listing.write_text("assets: [{name: ../x, url: http://x, sha256: 00}]\n")
    result = CliRunner().invoke(app, ["assets", "fetch", str(tmp_path / "out"), "--list", str(listing)])
    assert result.exit_code == 1 and "not an asset list" in result.output
