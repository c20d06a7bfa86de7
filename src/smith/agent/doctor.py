"""`smith agent doctor`: is this host ready to run the agent? One check a line: ok, warn or fail, with a fix.

Read-only: nothing here changes the host (the sandbox check starts and removes one real sandbox). Each check is
a small function of the settings returning its lines; ``run()`` gathers them in a fixed order. docs/hosts.md
walks through the same list per distribution.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from smith.agent.settings import AgentSettings
from smith.errors import SmithError

Level = Literal["ok", "warn", "fail"]
OLDEST_GUEST_PYTHON = (3, 9)
APPARMOR_RESTRICT = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
APPARMOR_PROFILE = Path("/etc/apparmor.d/smith-bwrap")
NM_CONF = Path("/etc/NetworkManager/conf.d")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.level:<4}  {self.name}: {self.message}" + (f"  (fix: {self.fix})" if self.fix else "")


def _run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


# -- KVM, QEMU, the image, the sandbox -------------------------------------------------------------------------


def check_kvm(s: AgentSettings) -> list[Check]:
    from smith.agent.backends import _kvm_usable

    usable, why = _kvm_usable(s.agent_kvm)
    needed = s.agent_backend in ("firecracker", "qemu")
    if usable:
        return [Check("kvm", "ok", why)]
    fix = ""
    if os.path.exists("/dev/kvm") and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        fix = "sudo usermod -aG kvm $USER (log in again), or run the agent as root under the systemd unit"
    elif not os.path.exists("/dev/kvm"):
        fix = "enable virtualisation in the firmware / use a metal or nested-virt instance; modprobe kvm_intel|kvm_amd"
    return [Check("kvm", "fail" if needed else "warn", f"{why}: VMs run under software emulation or not at all", fix)]


def check_backend(s: AgentSettings) -> list[Check]:
    from smith.agent.backends import probe

    found = probe(s)
    name = s.agent_backend if s.agent_backend != "auto" else found["auto"]
    info = found["backends"][name]
    if not info["available"]:
        return [Check("backend", "fail", f"{name} is not available: {info['reason']}", "smith agent backends")]
    level: Level = "warn" if name == "sandbox" else "ok"
    return [Check("backend", level, f"{name} ({info['reason']})")]


def check_qemu(s: AgentSettings) -> list[Check]:
    qemu = shutil.which(s.agent_qemu_bin)
    if qemu is None:
        level: Level = "fail" if s.agent_backend == "qemu" else "warn"
        fix = "apt-get install qemu-system-x86 (RHEL 9: qemu-kvm, then SMITH_AGENT_QEMU_BIN=/usr/libexec/qemu-kvm)"
        return [Check("qemu", level, f"no {s.agent_qemu_bin} on PATH", fix)]
    code, out = _run([qemu, "--version"])
    return [Check("qemu", "ok" if code == 0 else "warn", out.splitlines()[0] if out else qemu)]


def check_image(s: AgentSettings) -> list[Check]:
    if s.agent_kernel is not None:
        return [Check("guest-image", "ok", f"SMITH_AGENT_KERNEL={s.agent_kernel}")]
    from smith.errors import ConfigError
    from smith.images.build import find_inputs

    try:
        inputs = find_inputs()
    except ConfigError as exc:
        level: Level = "fail" if s.agent_backend == "qemu" else "warn"
        from smith.images.refresh import NO_IMAGE_HINT

        return [Check("guest-image", level, exc.message, NO_IMAGE_HINT)]
    return [Check("guest-image", "ok", f"built at agent start from {inputs.kernel.name}, {inputs.busybox}")]


def check_guest_python(s: AgentSettings) -> list[Check]:
    code, out = _run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    if code != 0:
        return [Check("guest-python", "warn", "no /usr/bin/python3: the guest image and sandbox need one")]
    major, minor = (int(x) for x in out.split(".")[:2])
    if (major, minor) < OLDEST_GUEST_PYTHON:
        return [Check("guest-python", "fail", f"python {out} is older than the guest agent's oldest, 3.9")]
    return [Check("guest-python", "ok", f"python {out}")]


def check_sandbox(s: AgentSettings) -> list[Check]:
    from smith.adapters.sandbox import SandboxVMM
    from smith.agent.backends import sandbox_launcher

    launcher, why = sandbox_launcher()
    if launcher is None:
        return [Check("sandbox", "fail" if s.agent_backend == "sandbox" else "warn", why, "apt-get install bubblewrap")]
    try:
        base = s.work_dir / "doctor-sandbox"
        asyncio.run(SandboxVMM(base, launcher=launcher).probe())
    except (SmithError, OSError) as exc:
        message = exc.message if isinstance(exc, SmithError) else str(exc)
        level: Level = "fail" if s.agent_backend == "sandbox" else "warn"
        return [Check("sandbox", level, message, "smith agent host-file apparmor (docs/hosts.md)")]
    return [Check("sandbox", "ok", f"a real {launcher} sandbox started and stopped")]


def check_apparmor(s: AgentSettings) -> list[Check]:
    try:
        restricted = APPARMOR_RESTRICT.read_text().strip() == "1"
    except OSError:
        return [Check("apparmor", "ok", "no AppArmor user-namespace restriction on this kernel")]
    if not restricted:
        return [Check("apparmor", "ok", "unprivileged user namespaces are not restricted")]
    if APPARMOR_PROFILE.exists():
        return [Check("apparmor", "ok", f"{APPARMOR_PROFILE} lets bwrap make user namespaces")]
    fix = f"smith agent host-file apparmor | sudo tee {APPARMOR_PROFILE} && sudo apparmor_parser -r {APPARMOR_PROFILE}"
    return [Check("apparmor", "fail", "AppArmor restricts unprivileged user namespaces and bwrap has no profile", fix)]


# -- the network ---------------------------------------------------------------------------------------------


def _network_level(s: AgentSettings, level: Level) -> Level:
    return level if s.agent_network or level != "fail" else "warn"


def check_network_tools(s: AgentSettings) -> list[Check]:
    missing = [b for b, pkg in (("ip", "iproute2"), ("nft", "nftables")) if shutil.which(b) is None]
    found = []
    if missing:
        found.append(
            Check(
                "net-tools",
                _network_level(s, "fail"),
                f"missing {', '.join(missing)}",
                "apt-get install iproute2 nftables",
            )
        )
    if not os.path.exists("/dev/net/tun"):
        found.append(Check("tun", _network_level(s, "fail"), "/dev/net/tun is missing", "modprobe tun"))
    return found or [Check("net-tools", "ok", "ip, nft and /dev/net/tun are here")]


def _routes(family: str) -> list[dict[str, Any]]:
    code, out = _run(["ip", "-j", family, "route", "show"])
    with contextlib.suppress(ValueError):
        return list(json.loads(out)) if code == 0 and out else []
    return []


def check_routes(s: AgentSettings) -> list[Check]:
    from smith.adapters.netcheck import pool_findings
    from smith.agent.network import docker_installed

    v4, v6 = _routes("-4"), _routes("-6")
    found = [
        Check(f.name, _network_level(s, f.level), f.message, f.fix)
        for f in pool_findings(s.agent_network_pool, s.agent_network_bridge, v4, docker_installed())
    ] or [Check("address-pool", "ok", f"{s.agent_network_pool} overlaps no route and no Docker pool in use")]
    has_v4 = any(r.get("dst") == "default" for r in v4)
    if not has_v4 and any(r.get("dst") == "default" for r in v6):
        found.append(
            Check(
                "ipv6-only",
                _network_level(s, "fail"),
                "this host has only an IPv6 default route; guests are IPv4-only and cannot reach GitHub",
                "give the host an IPv4 uplink (or NAT64 + DNS64 on the network)",
            )
        )
    uplink = s.agent_network_uplink or next((str(r["dev"]) for r in v4 if r.get("dst") == "default"), None)
    if uplink:
        with contextlib.suppress(OSError, ValueError):
            mtu = int(Path(f"/sys/class/net/{uplink}/mtu").read_text())
            note = "the bridge takes it and MSS is clamped" if mtu < 1500 else "full-size frames"
            found.append(Check("mtu", "ok", f"uplink {uplink} MTU {mtu}: {note}"))
    return found


def check_firewall(s: AgentSettings) -> list[Check]:
    from smith.adapters.firewall import Ruleset, check

    if os.geteuid() != 0 or shutil.which("nft") is None:
        return [Check("firewall", "warn", "cannot read the nftables ruleset (needs root and nft)")]
    code, out = _run(["nft", "-j", "list", "ruleset"])
    if code != 0:
        return [Check("firewall", "warn", f"nft list ruleset failed: {out[:200]}")]
    found = []
    for f in check(Ruleset.parse(out), s.agent_network_bridge, s.agent_network_host_ports):
        if f.name == "smith-tables":
            continue  # the agent makes them; absent while it is not running
        level: Level = "ok" if f.commands else f.level  # Docker: the agent inserts its accepts itself
        found.append(Check(f"firewall-{f.name}", _network_level(s, level), f.message, f.fix))
    if shutil.which("iptables-legacy"):
        code, legacy = _run(["iptables-legacy", "-S", "FORWARD"])
        if code == 0 and "-P FORWARD DROP" in legacy:
            fix = f"iptables-legacy -I FORWARD -i {s.agent_network_bridge} -j ACCEPT (and -o ... RELATED,ESTABLISHED)"
            found.append(Check("firewall-legacy", _network_level(s, "fail"), "iptables-legacy FORWARD drops", fix))
    return found or [Check("firewall", "ok", "no other table drops forwarded traffic")]


def check_nftables_service(s: AgentSettings) -> list[Check]:
    code, out = _run(["systemctl", "is-enabled", "nftables.service"])
    if code != 0 or out.strip() != "enabled":
        return [Check("nftables.service", "ok", "not enabled")]
    return [
        Check(
            "nftables.service",
            "warn",
            "enabled: a reload flushes the ruleset, Smith's tables included; the agent puts them back within "
            f"{s.agent_network_check_seconds:.0f} s",
            "avoid `flush ruleset` in /etc/nftables.conf, or restart smith-agent after a reload",
        )
    ]


def check_networkmanager(s: AgentSettings) -> list[Check]:
    code, out = _run(["nmcli", "-t", "-f", "RUNNING", "general"])
    if code != 0 or "running" not in out:
        return [Check("networkmanager", "ok", "not running")]
    with contextlib.suppress(OSError):
        for conf in NM_CONF.glob("*.conf"):
            if s.agent_network_bridge in conf.read_text():
                return [Check("networkmanager", "ok", f"{conf} leaves {s.agent_network_bridge} unmanaged")]
    fix = f"smith agent host-file networkmanager | sudo tee {NM_CONF}/smith-unmanaged.conf"
    return [Check("networkmanager", "warn", f"NetworkManager may take over {s.agent_network_bridge} and the taps", fix)]


def check_dns(s: AgentSettings) -> list[Check]:
    from smith.agent.network import resolver_problems

    problems = resolver_problems(s)
    if problems:
        return [Check("dns", _network_level(s, "fail"), problems[0])]
    from smith.adapters.resolver import guest_resolver

    return [Check("dns", "ok", f"guests resolve through {guest_resolver(s.agent_network_dns)}")]


# -- the host around it ----------------------------------------------------------------------------------------


def check_systemd(s: AgentSettings) -> list[Check]:
    if not Path("/run/systemd/system").is_dir():
        return [Check("systemd", "warn", "not a systemd host: run the agent under a supervisor that drains on SIGTERM")]
    code, out = _run(["systemctl", "show", "smith-agent", "-p", "KillMode,TimeoutStopUSec,Delegate,LoadState"])
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if code != 0 or props.get("LoadState") != "loaded":
        fix = "smith agent host-file systemd | sudo tee /etc/systemd/system/smith-agent.service"
        return [Check("systemd", "warn", "no smith-agent unit installed", fix)]
    bad = []
    if props.get("KillMode") != "mixed":
        bad.append(f"KillMode={props.get('KillMode')} (mixed lets jobs drain)")
    if props.get("Delegate") != "yes":
        bad.append("Delegate=no (no per-VM cgroups)")
    if bad:
        return [Check("systemd", "fail", "smith-agent unit: " + "; ".join(bad), "use `smith agent host-file systemd`")]
    return [Check("systemd", "ok", "smith-agent unit: KillMode=mixed, Delegate=yes")]


def check_cgroups(s: AgentSettings) -> list[Check]:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return [Check("cgroups", "warn", "cgroup v1: per-job limits use the v1 hierarchies (v2 is recommended)")]
    own = Path("/proc/self/cgroup").read_text().strip().split("::")[-1]
    base = CGROUP_ROOT / (s.agent_cgroup_parent or own).lstrip("/")
    controllers = set((base / "cgroup.controllers").read_text().split()) if base.exists() else set()
    missing = {"memory", "pids", "cpu"} - controllers
    if missing or not os.access(base, os.W_OK):
        why = f"{base} lacks {', '.join(sorted(missing))}" if missing else f"{base} is not writable"
        return [
            Check("cgroups", "warn", f"{why}: VMs cannot get cgroups of their own", "run under the unit (Delegate=yes)")
        ]
    return [Check("cgroups", "ok", f"cgroup v2, delegated at {base}")]


def check_disk(s: AgentSettings) -> list[Check]:
    data = s.data_dir
    probe = data if data.exists() else next((p for p in data.parents if p.exists()), Path("/"))
    st = os.statvfs(probe)
    free_gib = st.f_bavail * st.f_frsize / (1 << 30)
    found = []
    if free_gib * 1024 < s.agent_disk_reserve_mib:
        found.append(
            Check("disk", "fail", f"{free_gib:.1f} GiB free under {probe}", "free space or move SMITH_DATA_DIR")
        )
    elif free_gib < 20:
        found.append(Check("disk", "warn", f"{free_gib:.1f} GiB free under {probe}: little room for VMs' disks"))
    else:
        found.append(Check("disk", "ok", f"{free_gib:.0f} GiB free under {probe}"))
    if str(data).startswith("/root") or str(data).startswith("/home"):
        found.append(Check("data-dir", "warn", f"{data} is under a home directory", "use the unit's /var/lib/smith"))
    if os.stat(probe).st_dev == os.stat("/").st_dev:
        fix = "mount a dedicated filesystem at /var/lib/smith (docs/hosts.md)"
        found.append(Check("data-fs", "warn", f"{probe} is on the root filesystem: a job can fill it", fix))
    return found


CHECKS: tuple[Callable[[AgentSettings], list[Check]], ...] = (
    check_kvm,
    check_backend,
    check_qemu,
    check_image,
    check_guest_python,
    check_sandbox,
    check_apparmor,
    check_network_tools,
    check_routes,
    check_dns,
    check_firewall,
    check_nftables_service,
    check_networkmanager,
    check_systemd,
    check_cgroups,
    check_disk,
)


def run(settings: AgentSettings) -> list[Check]:
    """Every check, in order; a check that breaks is a warn line naming the error, never a traceback."""
    out: list[Check] = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            out += check(settings)
        except (OSError, ValueError, SmithError) as exc:
            message = exc.message if isinstance(exc, SmithError) else f"{type(exc).__name__}: {exc}"
            out.append(Check(name, "warn", f"could not check: {message}"))
    return out


def main(settings: AgentSettings, as_json: bool) -> int:
    checks = run(settings)
    if as_json:
        sys.stdout.write(json.dumps([c.as_dict() for c in checks], indent=2) + "\n")
    else:
        for c in checks:
            sys.stdout.write(c.line() + "\n")
    return 1 if any(c.level == "fail" for c in checks) else 0
