"""Item 18: the systemd unit Smith ships lets the agent drain, reach KVM and tun, and own its cgroups."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smith.agent.settings import AgentSettings
from smith.settings import default_data_dir

UNIT = Path(__file__).resolve().parents[2] / "src" / "smith" / "agent" / "hostfiles" / "smith-agent.service"
STOP_MARGIN = 60  # seconds past the drain for stopping VMs and sandboxes

# Options that hide a device, a sysctl, the cgroup tree or namespaces the agent needs, with what they break.
FORBIDDEN = {
    "PrivateDevices": "hides /dev/kvm and /dev/net/tun",
    "DevicePolicy": "closed/strict denies /dev/kvm, /dev/net/tun and loop devices",
    "DeviceAllow": "implies a device policy",
    "ProtectKernelTunables": "makes /proc/sys read-only: ip_forward and bridge sysctls fail",
    "ProtectControlGroups": "makes /sys/fs/cgroup read-only: no per-VM cgroups",
    "PrivateNetwork": "the bridge and taps would live in a private namespace",
    "RestrictNamespaces": "bwrap and the jailer make namespaces",
    "ProtectKernelModules": "kvm, tun and bridge modules cannot load on demand",
    "SystemCallFilter": "mount, setns, unshare and ioctls on /dev/kvm are needed",
    "CapabilityBoundingSet": "the agent needs CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SETUID ...",
    "NoNewPrivileges": "bwrap may be setuid on older hosts",
    "ProtectSystem": "strict: the jailer's chroots and loop mounts are made outside StateDirectory",
    "ProtectHome": "harmless but hides runner installs under /home",
}


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_lets_the_drain_finish_before_anything_is_killed() -> None:
    unit = settings()
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the agent alone; its VMs and jobs live through the drain
    assert unit["KillSignal"] == ["SIGTERM"]
    drain = AgentSettings.model_fields["agent_drain_seconds"].default
    assert int(unit["TimeoutStopSec"][0]) >= drain + STOP_MARGIN


def test_the_unit_delegates_cgroups_and_keeps_state_under_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    unit = settings()
    assert unit["Delegate"] == ["yes"] and unit["TasksMax"] == ["infinity"]
    assert unit["StateDirectory"] == ["smith"]
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/smith")  # what systemd passes for StateDirectory=smith
    monkeypatch.delenv("SMITH_DATA_DIR", raising=False)
    assert default_data_dir() == Path("/var/lib/smith") and AgentSettings().work_dir == Path("/var/lib/smith/agent")


def test_the_unit_hides_nothing_the_agent_needs() -> None:
    present = {key: FORBIDDEN[key] for key in settings() if key in FORBIDDEN}
    assert present == {}


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here (apt install systemd)")
    smith = Path(sys.executable).parent / "smith"
    unit = tmp_path / "smith-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/smith", str(smith)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(unit) in line]
    assert done.returncode == 0 and complaints == [], done.stderr
