"""The deployment examples in deploy/: systemd accepts the units and they are hardened; nginx parses its config
(with a real certificate); Caddy validates its Caddyfile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache.s3stub import self_signed

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictNamespaces": "yes",
    "SystemCallArchitectures": "native",
}


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_a_unit_per_service() -> None:
    assert [u.name for u in UNITS] == ["smith-cache.service", "smith-control.service", "smith-logs.service"]
    for unit in UNITS:
        service = unit.stem.removeprefix("smith-")
        d = directives(unit)
        assert d["ExecStart"] == [f"/usr/local/bin/smith {service} serve"]
        assert d["EnvironmentFile"] == [f"/etc/smith/{service}.env"]
        assert d["StateDirectory"] == [f"smith-{service}"]
        assert d["Environment"] == [f"SMITH_DATA_DIR=/var/lib/smith-{service}"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_are_hardened(unit: Path) -> None:
    d = directives(unit)
    assert {k: d.get(k, [None])[0] for k in HARDENING} == HARDENING
    assert "~@privileged" in d["SystemCallFilter"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_accepts_the_units(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here (apt install systemd)")
    smith = Path(sys.executable).parent / "smith"
    copy = tmp_path / unit.name
    copy.write_text(
        unit.read_text().replace("/usr/local/bin/smith", str(smith)).replace("/etc/smith/", f"-{tmp_path}/")
    )
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(copy) in line]
    assert done.returncode == 0 and complaints == [], done.stderr


def test_nginx_parses_the_example(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx; it is in .ci/apt-packages.txt)")
    crt, pem = self_signed(tmp_path)  # nginx loads the certificate and key: they must be real
    conf = (DEPLOY / "nginx" / "smith.conf").read_text()
    conf = conf.replace("/etc/letsencrypt/live/smith.example.com/fullchain.pem", str(crt))
    conf = conf.replace("/etc/letsencrypt/live/smith.example.com/privkey.pem", str(pem))
    (tmp_path / "smith.conf").write_text(conf)
    temp = tmp_path / "temp"
    temp.mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n"
        f"  access_log off;\n  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
        f"  include {tmp_path}/smith.conf;\n}}\n"
    )
    done = subprocess.run(
        [nginx, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr


def test_caddy_validates_the_example(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (apt-get install caddy; it is in .ci/apt-packages.txt)")
    done = subprocess.run(
        [caddy, "validate", "--config", str(DEPLOY / "caddy" / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)},
    )
    assert done.returncode == 0 and "Valid configuration" in done.stdout + done.stderr, done.stderr
