"""`smith agent doctor`: every check on this host, one line each (ok/warn/fail + fix), non-zero on a fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smith.agent import doctor
from smith.agent.settings import AgentSettings
from tests.cli.conftest import run_smith

NAMES = {"kvm", "backend", "qemu", "guest-image", "guest-python", "sandbox", "apparmor", "dns", "systemd", "disk"}


def test_doctor_checks_this_host_and_exits_by_its_worst_line() -> None:
    result = run_smith("agent", "doctor", "--json", timeout=120)
    checks = json.loads(result.out)  # stdout is the JSON alone: no log lines in it
    assert {c["name"] for c in checks} >= NAMES
    assert all(c["level"] in ("ok", "warn", "fail") and c["message"] for c in checks)
    assert result.code == (1 if any(c["level"] == "fail" for c in checks) else 0)
    plain = run_smith("agent", "doctor", timeout=120)
    assert len(plain.out.splitlines()) == len(checks) and "Traceback" not in plain.err


def test_a_failing_check_fails_the_doctor_with_its_fix() -> None:
    env = {"SMITH_AGENT_BACKEND": "qemu", "SMITH_AGENT_QEMU_BIN": "no-such-qemu"}
    result = run_smith("agent", "doctor", env=env, timeout=120)
    assert result.code == 1
    line = next(x for x in result.out.splitlines() if x.startswith("fail  qemu:"))
    assert "no no-such-qemu on PATH" in line and "(fix: apt-get install qemu-system-x86" in line


def test_apparmor_restriction_without_the_profile_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restrict = tmp_path / "apparmor_restrict_unprivileged_userns"
    restrict.write_text("1\n")
    monkeypatch.setattr(doctor, "APPARMOR_RESTRICT", restrict)
    monkeypatch.setattr(doctor, "APPARMOR_PROFILE", tmp_path / "smith-bwrap")
    [check] = doctor.check_apparmor(AgentSettings())
    assert check.level == "fail" and "smith agent host-file apparmor" in check.fix
    (tmp_path / "smith-bwrap").write_text("profile smith-bwrap /usr/bin/bwrap flags=(unconfined) { userns, }\n")
    assert doctor.check_apparmor(AgentSettings())[0].level == "ok"


def test_an_ipv6_only_host_is_told_its_guests_cannot_reach_github(monkeypatch: pytest.MonkeyPatch) -> None:
    v6 = [{"dst": "default", "gateway": "fe80::1", "dev": "eth0"}]
    monkeypatch.setattr(doctor, "_routes", lambda family: v6 if family == "-6" else [])
    checks = doctor.check_routes(AgentSettings(agent_network=True))
    only = next(c for c in checks if c.name == "ipv6-only")
    assert only.level == "fail" and "NAT64" in only.fix


def test_a_check_that_breaks_is_a_warn_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: AgentSettings) -> list[doctor.Check]:
        raise OSError("no /proc here")

    monkeypatch.setattr(doctor, "CHECKS", (broken,))
    assert doctor.run(AgentSettings()) == [doctor.Check("broken", "warn", "could not check: OSError: no /proc here")]


def test_host_files_print_what_the_package_ships() -> None:
    shipped = Path(doctor.__file__).parent / "hostfiles"
    for name, file in (("apparmor", "smith-bwrap.apparmor"), ("systemd", "smith-agent.service")):
        result = run_smith("agent", "host-file", name)
        assert result.code == 0 and result.out == (shipped / file).read_text()
    assert run_smith("agent", "host-file", "nope").code == 1
