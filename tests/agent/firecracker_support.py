"""Shared pieces for the Firecracker tests: the pinned spec, a stand-in binary, a VMM wired to the fake."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smith.adapters.firecracker.vmm import FirecrackerConfig, FirecrackerVMM
from smith.domain.vms import VMShape
from smith.testing.firecracker import default_spec_path, first_cgroup2_mount, write_stand_in
from smith.testing.network import MemoryNetwork
from smith.wire.agent import JobSpec, RunnerCredential
from smith.wire.guest import GuestConfig

SPEC_PATH = default_spec_path()
SHAPE = VMShape("smith-2vcpu", 2, 512, disk_mib=64)
SECRET = "ghs_jitconfig_SECRET_value_1234"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """A short command, synchronously (tests only)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session; return once /proc shows its command line.

    (Popen returns as soon as the exec began: for a moment the child's /proc/<pid>/cmdline is still empty.)
    """
    proc = subprocess.Popen(argv, start_new_session=True)
    want = "\0".join(argv).encode()
    for _ in range(1000):
        if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(want):
            break
        time.sleep(0.005)
    return proc


def size_of(path: str | Path) -> int:
    return Path(path).stat().st_size


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return spec


def guest_config(run: str = "echo hi", *, secret: bool = False) -> GuestConfig:
    runner = RunnerCredential(kind="jit", value=SECRET) if secret else None
    return GuestConfig(
        job=JobSpec(id="job-1", runner_class="smith-2vcpu", vcpus=2, memory_mib=512, run=run), runner=runner
    )


@dataclass
class Rig:
    """A FirecrackerVMM on the fake: stand-in binary, in-memory network, call records per VM."""

    base: Path
    vmm: FirecrackerVMM
    network: MemoryNetwork
    records: Path

    def calls(self, name: str) -> list[dict[str, Any]]:
        path = self.records / f"{name}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def leftovers(self) -> list[Path]:
        jails = self.base / "jails" / "firecracker"
        return sorted(jails.iterdir()) if jails.exists() else []


def make_rig(
    *fake_args: str, jailed: bool = False, rootfs_bytes: bytes = b"", network: Any = None, **config: Any
) -> Iterator[Rig]:
    """``rootfs_bytes``: the root filesystem's bytes (default: an initramfs). ``network``: default an in-memory
    one, which makes no taps (the fake then does not look for them).

    ``jailed``: through the fake jailer (paths in API bodies are then inside the VM's chroot). The jail user
    is this test's own user: the interpreter under /root could not be run by another one."""
    # Unix socket paths are limited to 107 bytes: keep the base short, not under pytest's long tmp_path.
    base = Path(tempfile.mkdtemp(prefix="fc", dir="/tmp"))
    try:
        records = base / "calls"
        records.mkdir()
        kernel = base / "vmlinux"
        kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
        rootfs = base / "initrd.cpio"  # what `smith image build` makes: an initramfs (booted as initrd_path)
        rootfs.write_bytes(b"070701" + b"\0" * 4090)
        if rootfs_bytes:
            rootfs = base / "rootfs.ext4"
            rootfs.write_bytes(rootfs_bytes)
        rootfs.chmod(0o644)
        binary = write_stand_in(
            base / "firecracker",
            "--spec",
            str(SPEC_PATH),
            "--record-dir",
            str(records),
            *(["--taps", "ignore"] if network is None else []),
            *fake_args,
        )
        network = network or MemoryNetwork()
        if jailed:
            jailer = write_stand_in(base / "jailer", "--record-dir", str(records), jailer=True)
            config = {"jailer_bin": jailer, "uid": os.geteuid(), "gid": os.getegid(), **config}
        cfg = FirecrackerConfig(
            kernel=kernel,
            rootfs=rootfs,
            chroot_base=base / "jails",
            firecracker_bin=binary,
            use_jailer=jailed,
            stop_timeout=5.0,
            socket_timeout=10.0,
            **config,
        )
        vmm = FirecrackerVMM(cfg, network)
        yield Rig(base, vmm, network, records)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        mount = first_cgroup2_mount()
        if jailed and mount is not None:  # as root the fake jailer made its parent cgroup, as the real one does
            with contextlib.suppress(OSError, UnboundLocalError):
                (mount / (vmm.config.parent_cgroup or vmm.config.firecracker_bin.name)).rmdir()
