"""Pick the VM backend for this machine and say why: Firecracker, else QEMU microvm, else the sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from smith.adapters.childenv import minimal_env
from smith.errors import ConfigError, SmithError
from smith.logging import get_logger
from smith.ports import VMM, Network

log = get_logger("smith.agent.backends")
ORDER = ("firecracker", "qemu", "sandbox")


def _kvm_usable(forced: str = "auto") -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    if forced == "off":
        return False, "SMITH_AGENT_KVM=off"
    if forced != "on" and os.path.exists("/sys/module/kvm_pvm"):
        return False, "/dev/kvm is PVM (kvm_pvm loaded): it boots only PVM guest kernels, not normal ones"
    return True, "/dev/kvm is usable"


def sandbox_launcher() -> tuple[str | None, str]:
    """bubblewrap if it is here, else util-linux's unshare (the same sandbox) if user namespaces work."""
    bw = shutil.which("bwrap")
    if bw:
        return "bwrap", f"{bw}: namespaces only, weaker isolation than a VM"
    un = shutil.which("unshare")
    if un is None:
        return None, "neither bwrap nor unshare on PATH (apt install bubblewrap)"
    try:
        done = subprocess.run(
            [un, "--user", "--map-root-user", "--mount", "--pid", "--fork", "true"],
            capture_output=True,
            timeout=10,
            env=minimal_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"no bwrap, and {un} failed: {exc}"
    if done.returncode:
        err = done.stderr.decode(errors="replace").strip()
        return None, f"no bwrap, and {un} cannot make user namespaces here: {err}"
    return "unshare", f"{un} (no bwrap here): namespaces only, weaker isolation than a VM"


def probe(settings: Any | None = None) -> dict[str, Any]:
    """What each backend needs, whether this machine has it, and what `auto` would choose."""
    fc_bin = getattr(settings, "agent_firecracker_bin", "firecracker")
    qemu_bin = getattr(settings, "agent_qemu_bin", "qemu-system-x86_64")
    kvm, kvm_why = _kvm_usable(getattr(settings, "agent_kvm", "auto"))
    out: dict[str, dict[str, Any]] = {}
    fc = shutil.which(fc_bin)
    has_image = bool(settings and settings.agent_kernel and settings.agent_rootfs)
    if not fc:
        out["firecracker"] = {"available": False, "reason": f"no {fc_bin} binary on PATH"}
    elif not kvm:
        out["firecracker"] = {"available": False, "reason": kvm_why}
    elif not has_image:
        out["firecracker"] = {"available": False, "reason": "SMITH_AGENT_KERNEL / SMITH_AGENT_ROOTFS not set"}
    else:
        out["firecracker"] = {"available": True, "reason": f"{fc} with KVM"}
    q = shutil.which(qemu_bin)
    if not q:
        out["qemu"] = {"available": False, "reason": f"no {qemu_bin} binary on PATH"}
    else:
        accel = "KVM" if kvm else "software emulation (slow: no usable KVM)"
        out["qemu"] = {"available": True, "reason": f"{q} with {accel}", "kvm": kvm}
    launcher, why = sandbox_launcher()
    out["sandbox"] = {"available": launcher is not None, "reason": why, "launcher": launcher}
    # auto: a VM if a fast one is here; QEMU only with KVM (software emulation is too slow to be the default).
    auto = "sandbox"
    if out["firecracker"]["available"]:
        auto = "firecracker"
    elif out["qemu"]["available"] and (out["qemu"].get("kvm") or not out["sandbox"]["available"]):
        auto = "qemu"
    return {"backends": out, "auto": auto}


def select_backend(settings: Any, network: Network | None = None) -> tuple[VMM, str]:
    """The VMM to use and the reason, per SMITH_AGENT_BACKEND (auto picks the best available)."""
    found = probe(settings)
    name = settings.agent_backend if settings.agent_backend != "auto" else found["auto"]
    info = found["backends"][name]
    if not info["available"]:
        raise ConfigError(f"backend {name} is not available here: {info['reason']}")
    why = info["reason"] if settings.agent_backend != "auto" else f"auto: {info['reason']}"
    try:
        return build(name, settings, network), why
    except SmithError as exc:  # auto: a VM backend that cannot start here (no guest image) yields to the sandbox
        fallback = found["backends"]["sandbox"]
        if settings.agent_backend != "auto" or name == "sandbox" or not fallback["available"]:
            raise
        log.warning("backend cannot start; using the sandbox", backend=name, error=exc.message)
        return build("sandbox", settings, network), f"auto: {name} cannot start ({exc.message}); {fallback['reason']}"


def jailer_parent_cgroup(settings: Any) -> str:
    """The agent's own delegated cgroup (v2), so the jailer's per-VM cgroups live inside the agent's unit; ""
    (the jailer's default, named after the binary) where there is none."""
    from smith.adapters.cgroups import Cgroups

    if os.geteuid() != 0:
        return ""
    found = Cgroups.detect(getattr(settings, "agent_cgroup_parent", None))
    return found.delegated() if found is not None else ""


def build(name: str, settings: Any, network: Network | None = None) -> VMM:
    """The backend ``name``; VMs get their taps from ``network`` (the host bridge, SMITH_AGENT_NETWORK=true)."""
    work = settings.work_dir / name
    work.mkdir(parents=True, exist_ok=True)
    if name == "sandbox":
        from smith.adapters.sandbox import SandboxVMM

        return SandboxVMM(
            base_dir=work,
            launcher=sandbox_launcher()[0] or "bwrap",
            cgroup_parent=getattr(settings, "agent_cgroup_parent", None),
            uid_base=getattr(settings, "agent_sandbox_uid_base", 100_000),
        )
    if name == "qemu":
        from smith.adapters.qemu import QemuVMM

        return QemuVMM.from_settings(settings, work, network)
    if name == "firecracker":
        from pathlib import Path

        from smith.adapters.firecracker.network import TapNetwork
        from smith.adapters.firecracker.vmm import FirecrackerConfig, FirecrackerVMM

        config = FirecrackerConfig(
            kernel=settings.agent_kernel,
            rootfs=settings.agent_rootfs,
            chroot_base=work,
            firecracker_bin=Path(shutil.which(settings.agent_firecracker_bin) or settings.agent_firecracker_bin),
            jailer_bin=Path(shutil.which(settings.agent_jailer_bin) or settings.agent_jailer_bin),
            use_jailer=os.geteuid() == 0,  # the jailer needs root (chroot, cgroups, setuid)
            parent_cgroup=jailer_parent_cgroup(settings),
            dns=settings.agent_network_dns or "",
            rootfs_dir=settings.agent_rootfs_dir,
            sticky_dir=settings.agent_sticky_dir,
            sticky_quota_bytes=settings.agent_sticky_quota_mib << 20,
        )
        return FirecrackerVMM(config, network or TapNetwork())
    raise ConfigError(f"unknown backend {name}")
