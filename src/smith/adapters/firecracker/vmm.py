"""The Firecracker backend: boots a microVM per job through the jailer, hands it its job over MMDS.

Boot is an ordered list of named steps; each step that makes something pushes its undo onto the machine's
cleanup stack, and a failure at any step unwinds everything done so far, newest first::

    chroot -> network -> process -> socket -> logging -> machine_config -> boot_source -> drives
           -> network_interface -> mmds -> vsock -> start

The image's initramfs (a cpio archive, what ``smith image build`` makes) is booted as ``initrd_path``. With a
rootfs directory (``smith rootfs``; ``SMITH_AGENT_ROOTFS_DIR``) each VM boots the version active when it boots:
its own copy of the version's ext4 image as a read-write drive, which the initramfs switches to, and the
version's kernel if it has one (:mod:`.disks`); without, the initramfs is the whole system. An ext4 root drive
given as ``rootfs`` itself is attached as Firecracker's root device (its kernel must then mount it without
modules). Every VM also gets a scratch drive of its shape's ``disk_mib`` (an empty ext4), mounted at /work.

The guest's address, gateway and resolver go on the kernel command line as ``smith.ip=``,
``smith.gw=`` and ``smith.dns=``, which the image's init reads (the Debian kernel has no ``ip=``
autoconfiguration). ``start`` waits for the guest agent's ``{"smith": "ready"}`` on the console, so a guest
that panicked after InstanceStart (which answers 204 at once) fails the boot with the console's last lines.

A booted machine waits for its job: ``assign()`` PUTs the GuestConfig into MMDS at ``/smith/config`` (never on
the kernel command line, which any process in the guest can read in /proc/cmdline and which Firecracker logs),
wrapped with the host's clock and a random seed (a restored clone has the snapshot's). Once the guest reports
``started`` the config is removed from MMDS, so the runner credential and cache token are not readable for the
rest of the job. The serial console (Firecracker's stdout, which drops bytes nobody reads) is drained from
process start (:mod:`.console`); the guest agent's events come over vsock where the guest kernel has it
(:mod:`.events`, listening in the chroot before InstanceStart), else on the console. A workflow job's steps go
to the guest on that same vsock connection (:meth:`FirecrackerMachine.send`); without it (vsock off, or a guest
kernel without vsock: its events come on the console) a steps-mode job is refused, naming why. The guest's init
ends with ``reboot -f`` and the kernel has ``reboot=k``, so Firecracker exits as soon as the job is done
(``poweroff`` would leave it running on x86); ``stop()`` waits for that, else sends Ctrl+Alt+Del (init traps it
and reboots), kills after a bound, and unwinds the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from smith.adapters import vmdisks
from smith.adapters.childenv import minimal_env
from smith.adapters.firecracker import disks
from smith.adapters.firecracker.client import FirecrackerClient, wait_for_socket
from smith.adapters.firecracker.console import Console, console_pipe, open_console
from smith.adapters.firecracker.events import EventListener, events_socket
from smith.adapters.firecracker.jailer import API_SOCKET, Jail, JailSpec, chroot_base_problem, jail_name
from smith.adapters.firecracker.models import (
    BootSource,
    Drive,
    Logger,
    LogLevel,
    MachineConfiguration,
    MemoryBackend,
    Metrics,
    MmdsConfig,
    NetworkInterface,
    NetworkOverride,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vsock,
    VsockOverride,
)
from smith.adapters.resolver import FALLBACK, guest_resolver
from smith.adapters.stickydisks import Checkout, StickyDisks, settle
from smith.asyncutil import CleanupStack
from smith.domain.sticky import StickyPlan
from smith.domain.vms import Backend, Slot, VMShape
from smith.errors import ConfigError, PayloadTooLarge, SmithError, VMError
from smith.logging import get_logger
from smith.ports import Network
from smith.rootfs.store import Built
from smith.wire.guest import GuestConfig, GuestEvent

log = get_logger("smith.firecracker")

DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off quiet i8042.noaux"
IFACE = "eth0"
MMDS_ADDRESS = "169.254.169.254"
KERNEL, ROOTFS, INITRD = "vmlinux", "rootfs.ext4", "initrd.cpio"
LOG, METRICS, VSOCK = "firecracker.log", "metrics.json", "v.sock"
VMSTATE, MEMFILE = "snapshot.vmstate", "snapshot.mem"
STATE_FILE = "smith.json"  # beside root/: what cleanup_leftovers needs after a crash
SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class FirecrackerConfig:
    """Where things are and how VMs are jailed. Built by the agent from its settings."""

    kernel: Path  # uncompressed ELF vmlinux (Firecracker 1.16 on x86_64 boots nothing else)
    rootfs: Path  # the image's initramfs (cpio: booted as initrd_path) or an ext4 root drive; shared read-only
    chroot_base: Path  # jails live in <chroot_base>/<firecracker binary name>/<prefix><vm id>/root
    firecracker_bin: Path = Path("/usr/local/bin/firecracker")
    jailer_bin: Path = Path("/usr/local/bin/jailer")
    use_jailer: bool = True  # False: run Firecracker directly (development, tests; no chroot, no cgroup)
    uid: int = 65534
    gid: int = 65534
    parent_cgroup: str = ""  # cgroup v2 parent under /sys/fs/cgroup; default: the binary's name
    cpu_period_us: int = 100_000
    cpu_headroom: float = 0.5  # CPUs above the vCPUs in cpu.max: Firecracker's API, VMM and I/O threads need room
    boot_args: str = DEFAULT_BOOT_ARGS
    dns: str = ""  # the guest's resolver (smith.dns=); "" = the host's upstream, else a fallback (adapters.resolver)
    ready_timeout: float = 60.0  # from InstanceStart to the guest agent's ready line
    vsock: bool = True  # guest events over vsock (the console is the fallback for a guest kernel without it)
    prefix: str = "smith-"
    log_level: LogLevel = "Warning"
    socket_timeout: float = 5.0
    stop_timeout: float = 10.0
    # --http-api-max-payload-size and --mmds-size-limit: the job's config (its script too) must fit in both.
    # Firecracker's default is 51200 bytes; the control plane accepts scripts of up to 1 MB.
    api_payload_limit: int = 2 * 1024 * 1024
    extra_mib: int = 0  # memory.max headroom above the guest's RAM for Firecracker itself; 0 = 64 MiB + 3%
    # `smith rootfs` output_dir: each VM boots the version active when it boots (its ext4 image, through the
    # initramfs in ``rootfs``); None: the initramfs alone
    rootfs_dir: Path | None = None
    disk_cache: Path | None = None  # scratch templates (one empty ext4 per size); None: <chroot_base>/disks
    sticky_dir: Path | None = None  # sticky disks (adapters/stickydisks.py); None: <chroot_base>/sticky
    sticky_quota_bytes: int = 50 << 30  # per org, allocated bytes
    shutdown_timeout: float = 30.0  # a job's guest with sticky disks has this long to shut down cleanly

    def validate(self) -> None:
        """Raise ConfigError naming the first thing that cannot work."""
        for what, path in (("kernel", self.kernel), ("rootfs", self.rootfs)):
            if not path.is_file():
                raise ConfigError(f"Firecracker {what} {path} does not exist")
        with self.kernel.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                raise ConfigError(
                    f"kernel {self.kernel} is not an uncompressed ELF vmlinux; Firecracker 1.16 on x86_64 boots "
                    "only that (extract it from a bzImage with the kernel's scripts/extract-vmlinux)"
                )
        if self.rootfs_dir is not None and not self.initramfs:
            raise ConfigError(
                f"a rootfs version boots through the initramfs of `smith image build`; {self.rootfs} is not one"
            )
        if self.use_jailer and "firecracker" not in self.firecracker_bin.resolve().name:
            raise ConfigError(
                f"the jailer needs 'firecracker' in the Firecracker binary's file name ({self.firecracker_bin} "
                f"is {self.firecracker_bin.resolve()}: the jailer goes by the file a link points to)"
            )
        if not self.prefix or not all(c.isalnum() or c == "-" for c in self.prefix):
            raise ConfigError("the VM name prefix must be letters, digits and hyphens")
        if self.use_jailer:
            problem = chroot_base_problem(self.chroot_base)
            if problem:
                raise ConfigError(problem)

    @property
    def initramfs(self) -> bool:
        """Whether ``rootfs`` is an initramfs (a cpio archive, plain or gzipped) rather than a disk image."""
        return is_initramfs(self.rootfs)


def is_initramfs(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head in (b"070701", b"070702") or head[:2] == b"\x1f\x8b"


@dataclass(frozen=True)
class Snapshot:
    vmstate: Path
    mem: Path
    disks: tuple[Path, ...] = ()  # the template's drives as it was paused (a restore boots with clones of them)
    image: str | None = None  # the rootfs version the template booted


class FirecrackerMachine:
    """A booted Firecracker microVM."""

    def __init__(
        self, vm_id: str, name: str, jail: Jail, *, stop_timeout: float = 10.0, payload_limit: int = 51200
    ) -> None:
        self.id = vm_id
        self.name = name
        self.jail = jail
        self.cleanup = CleanupStack("firecracker")
        self.stop_timeout = stop_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.console: Console | None = None
        self.client: FirecrackerClient | None = None
        self.slot: Slot | None = None
        self.net: dict[str, str] = {}  # the guest's network identity, handed over again in assign() (clones)
        self.command: list[str] = []
        self.jailer_command: list[str] = []
        self.boot_args = ""
        self.image: str | None = None  # the rootfs version this VM booted (None: the initramfs alone)
        self.drives: list[disks.FcDrive] = []
        self.sticky: list[Checkout] = []
        self.sticky_store: StickyDisks | None = None
        self.shutdown_timeout = 30.0
        self.started = False  # InstanceStart (or a resumed snapshot load) happened
        self.payload_limit = payload_limit  # the API's and MMDS's size limit (FirecrackerConfig.api_payload_limit)
        self._assigned = False
        self._stopped = False
        self._clearing: asyncio.Task[None] | None = None
        self._done = False  # the guest reported its exit: its init reboots and Firecracker exits by itself
        self.channel: EventListener | None = None  # the vsock event channel's listener (None: vsock is off)

    @property
    def api(self) -> FirecrackerClient:
        if self.client is None:
            raise VMError(f"VM {self.id} has no API connection")
        return self.client

    def host_logs(self) -> dict[str, Path]:
        """Firecracker's own log and its metrics (JSON lines, one per flush), in the chroot."""
        return {"firecracker": self.jail.host(LOG), "firecracker-metrics": self.jail.host(METRICS)}

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def died(self, what: str) -> VMError:
        """The error for a VM whose Firecracker is gone, with the console's last lines (a panic, usually)."""
        code = self.process.returncode if self.process is not None else None
        tail = self.console.tail() if self.console is not None else ""
        return VMError(f"VM {self.id} {what} (Firecracker exited with {code}); console: {tail or '(nothing)'}")

    async def assign(self, config: GuestConfig) -> None:
        """Put the job's config into MMDS, where the guest agent polls for it, with the host's clock and a seed."""
        if self._stopped:
            raise VMError(f"VM {self.id} is stopped")
        if self._assigned:
            raise VMError(f"VM {self.id} already has a job")
        if self.process is not None and self.process.returncode is not None:
            raise self.died("is gone")
        if config.steps and self.channel is None:
            raise VMError(f"VM {self.id} cannot run a workflow job: {NO_CHANNEL} (this backend has vsock turned off)")
        envelope: dict[str, object] = {
            "config": config.model_dump(mode="json"),
            "now": time.time(),
            "seed": os.urandom(32).hex(),
        }
        if self.net:  # a clone restored from a snapshot has its template's address and MAC until it takes these
            envelope["net"] = self.net
        data = {"smith": {"config": envelope}}
        size = len(orjson.dumps(data))
        if size > self.payload_limit:
            raise PayloadTooLarge(
                f"job config for VM {self.id} is {size} bytes; Firecracker's API takes at most {self.payload_limit}"
            )
        self._assigned = True
        await self.api.put_mmds(data)

    async def send(self, message: dict[str, object]) -> None:
        """One steps-mode command to the guest agent, on its vsock connection (see :mod:`.events`)."""
        channel = await stepping_channel(self)
        try:
            await channel.send(orjson.dumps(message) + b"\n")
        except OSError as exc:
            raise VMError(f"VM {self.id}: the guest's vsock channel closed ({exc})") from exc

    def guest_event(self, event: GuestEvent) -> None:
        """The guest has read its config once it reports ``started``: take the credentials out of MMDS."""
        if event.type == "exit":
            self._done = True
        if event.type == "started" and self._clearing is None and self.client is not None:
            self._clearing = asyncio.create_task(self._clear_mmds())

    async def _clear_mmds(self) -> None:
        try:
            await self.api.put_mmds({})
        except SmithError as exc:
            log.warning("firecracker.mmds_clear_failed", vm_id=self.id, error=str(exc))

    async def events(self) -> AsyncIterator[GuestEvent]:
        """Serial console lines: GuestEvent JSON from the guest agent, anything else (kernel) as system lines."""
        if self.console is None:
            return
        async for event in self.console.events():
            yield event

    async def finish(self, succeeded: bool) -> list[str]:
        """After the job: commit its sticky disks if it succeeded and its guest shut down cleanly (its init
        unmounts them and reboots: Firecracker exits with 0), else discard them. The names committed."""
        if not self.sticky or self.sticky_store is None:
            return []
        proc = self.process
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.shutdown_timeout)
        clean = proc is not None and proc.returncode == 0
        return await settle(self.sticky_store, self.sticky, succeeded, clean, self.id)

    async def stop(self) -> None:
        """Wait for a guest that is done to exit (its init reboots), else Ctrl+Alt+Del, then kill after
        ``stop_timeout``; remove everything made for it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self.process
        if self._done and proc is not None and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
        if self.started and proc is not None and proc.returncode is None and self.client is not None:
            try:
                await self.client.send_ctrl_alt_del()
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except (SmithError, TimeoutError):
                pass  # not started, or not listening: the kill below settles it
        if self._clearing is not None:
            self._clearing.cancel()
        await self.cleanup.unwind()


class FirecrackerVMM:
    backend = Backend.FIRECRACKER
    isolation = "KVM microVM (Firecracker), jailed"

    STEPS = (
        "chroot",
        "network",
        "process",
        "socket",
        "logging",
        "machine_config",
        "boot_source",
        "drives",
        "network_interface",
        "mmds",
        "vsock",
        "start",
    )
    RESTORE_STEPS = ("chroot", "network", "process", "socket", "logging", "load_snapshot")

    def __init__(self, config: FirecrackerConfig, network: Network) -> None:
        config.validate()
        # The jailer canonicalises --exec-file: a linked binary's chroot and cgroup are named after its target.
        config = dataclasses.replace(config, firecracker_bin=config.firecracker_bin.resolve())
        self.config = config
        self.network = network
        self.jails_dir = config.chroot_base / config.firecracker_bin.name
        # We reach the API socket by its host path, which must fit a Unix socket address: VM names are cut to fit.
        overhead = len(str(self.jails_dir / "root" / API_SOCKET.lstrip("/"))) + 1
        self.max_name = min(64, SOCKET_PATH_MAX - overhead)
        if self.max_name < len(config.prefix) + 12:
            raise ConfigError(
                f"chroot base {config.chroot_base} is too long: the API socket path under it would not fit a Unix "
                f"socket address ({SOCKET_PATH_MAX} bytes); use a shorter directory"
            )
        self._cid = 2

    async def boot(self, shape: VMShape, vm_id: str, *, sticky: StickyPlan | None = None) -> FirecrackerMachine:
        """A VM of ``shape``; with ``sticky``, with those sticky disks (needs a rootfs version)."""
        return await self._run(_Boot(self, shape, vm_id, sticky=sticky), self.STEPS)

    @property
    def sticky_store(self) -> StickyDisks:
        c = self.config
        return StickyDisks(c.sticky_dir or c.chroot_base / "sticky", c.sticky_quota_bytes)

    async def boot_from_snapshot(self, shape: VMShape, vm_id: str, snapshot: Snapshot) -> FirecrackerMachine:
        """A VM restored from ``snapshot`` and resumed (warm pools: ~ms instead of a kernel boot)."""
        return await self._run(_Boot(self, shape, vm_id, snapshot=snapshot), self.RESTORE_STEPS)

    async def _run(self, boot: _Boot, steps: tuple[str, ...]) -> FirecrackerMachine:
        step = ""
        try:
            for step in steps:
                await getattr(boot, step)()
        except BaseException as exc:
            log.warning("firecracker.boot_failed", vm_id=boot.vm_id, step=step, error=str(exc))
            await asyncio.shield(boot.machine.stop())
            if isinstance(exc, SmithError):
                raise
            if isinstance(exc, OSError):
                raise VMError(f"booting VM {boot.vm_id} failed at {step}: {exc}") from exc
            raise
        log.info("firecracker.booted", vm_id=boot.vm_id, steps=len(steps))
        return boot.machine

    async def snapshot(self, machine: FirecrackerMachine, directory: Path) -> Snapshot:
        """Pause, write a full snapshot into ``directory`` with a copy of each drive as it is then (the guest has
        them mounted: a restore must see the very same bytes), resume."""
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        jail = machine.jail
        state, mem = self._api_path(jail, VMSTATE), self._api_path(jail, MEMFILE)
        saved = tuple(directory / d.file for d in machine.drives)
        await machine.api.pause()
        try:
            await machine.api.create_snapshot(
                SnapshotCreateParams(snapshot_path=state, mem_file_path=mem, snapshot_type="Full")
            )
            for drive, copy in zip(machine.drives, saved, strict=True):
                copy.unlink(missing_ok=True)
                await asyncio.to_thread(vmdisks.raw_clone, jail.host(drive.file), copy)
        finally:
            await machine.api.resume()
        result = Snapshot(directory / VMSTATE, directory / MEMFILE, saved, machine.image)
        for name, target in ((VMSTATE, result.vmstate), (MEMFILE, result.mem)):  # the memory file is guest-RAM big
            await asyncio.to_thread(shutil.move, jail.host(name), target)
        return result

    async def cleanup_leftovers(self) -> list[str]:
        """Kill the VMs of a crashed agent (by their recorded PID), free their slots, remove their jails."""
        removed: list[str] = []
        await asyncio.to_thread(self.sticky_store.clear_refs)  # no VM runs now: every checkout is stale
        if not self.jails_dir.is_dir():
            return removed
        for vm_dir in sorted(self.jails_dir.glob(f"{self.config.prefix}*")):
            if not vm_dir.is_dir():
                continue
            state: dict[str, object] = {}
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((vm_dir / STATE_FILE).read_text())
            pid = state.get("pid")
            if isinstance(pid, int) and _runs_vm(pid, vm_dir.name):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            slot = state.get("slot")
            if isinstance(slot, dict):
                with contextlib.suppress(SmithError, TypeError, OSError):
                    await self.network.release(Slot(**slot))
            self._jail(vm_dir.name).remove()
            removed.append(vm_dir.name)
        return removed

    # -- helpers used by the steps ------------------------------------------------------------------------

    def _jail(self, name: str, netns: str = "", shape: VMShape | None = None) -> Jail:
        c = self.config
        cgroups: dict[str, str] = {}
        if shape is not None:
            extra = c.extra_mib or 64 + shape.memory_mib * 3 // 100
            quota = int((shape.vcpus + c.cpu_headroom) * c.cpu_period_us)
            cgroups = {
                "cpu.max": f"{quota} {c.cpu_period_us}",
                "memory.max": str((shape.memory_mib + extra) * 1024 * 1024),
            }
        return Jail(
            JailSpec(
                id=name,
                exec_file=c.firecracker_bin,
                jailer_bin=str(c.jailer_bin),
                chroot_base=c.chroot_base,
                uid=c.uid,
                gid=c.gid,
                netns=netns,
                parent_cgroup=c.parent_cgroup,
                cgroups=cgroups,
                resource_limits={"no-file": 2048},
                firecracker_args=("--api-sock", API_SOCKET, *self._limits()),
            )
        )

    def _limits(self) -> tuple[str, ...]:
        n = str(self.config.api_payload_limit)
        return ("--http-api-max-payload-size", n, "--mmds-size-limit", n)

    def _api_path(self, jail: Jail, name: str) -> str:
        """The path Firecracker is given: inside the chroot when jailed, the host path otherwise."""
        return jail.inside(name) if self.config.use_jailer else str(jail.host(name))

    def _version(self) -> Built | None:
        """The rootfs version active now (resolved once per boot: a VM keeps it whatever is activated later)."""
        version = vmdisks.active_version(self.config.rootfs_dir, "Firecracker")
        if version is None:
            return None
        kernel = version.kernel
        if kernel is not None and kernel.read_bytes()[:4] != b"\x7fELF":
            raise VMError(f"rootfs version {version.name}: its kernel is not an uncompressed ELF vmlinux (Firecracker)")
        return version

    def _next_cid(self) -> int:
        self._cid += 1
        return self._cid


class _Boot:
    """The state of one boot; each public coroutine is one step of FirecrackerVMM.STEPS."""

    def __init__(
        self,
        vmm: FirecrackerVMM,
        shape: VMShape,
        vm_id: str,
        snapshot: Snapshot | None = None,
        sticky: StickyPlan | None = None,
    ) -> None:
        self.vmm = vmm
        self.config = vmm.config
        self.shape = shape
        self.vm_id = vm_id
        self.snapshot = snapshot
        name = jail_name(vmm.config.prefix, vm_id, vmm.max_name)
        self.jail = vmm._jail(name, shape=shape)  # validates the id before anything is made
        c = vmm.config
        self.machine = FirecrackerMachine(
            vm_id, name, self.jail, stop_timeout=c.stop_timeout, payload_limit=c.api_payload_limit
        )
        self.state: dict[str, object] = {"vm_id": vm_id}
        self.version = vmm._version() if snapshot is None else None
        self.sticky = sticky if sticky is not None and sticky.disks else None
        if self.sticky is not None and self.version is None:
            raise VMError("sticky disks need a rootfs version to boot (SMITH_AGENT_ROOTFS_DIR)")
        self.machine.shutdown_timeout = c.shutdown_timeout
        self.machine.image = self.version.name if self.version else snapshot.image if snapshot else None

    @property
    def cleanup(self) -> CleanupStack:
        return self.machine.cleanup

    def path(self, name: str) -> str:
        return self.vmm._api_path(self.jail, name)

    def save_state(self) -> None:
        (self.jail.dir / STATE_FILE).write_text(json.dumps(self.state))

    async def chroot(self) -> None:
        jail = self.jail
        await asyncio.to_thread(jail.create)

        async def remove() -> None:
            await asyncio.to_thread(jail.remove)

        self.cleanup.push("chroot", remove)
        await asyncio.to_thread(self._fill_chroot)
        await self._checkout()

    async def _checkout(self) -> None:
        """Each sticky disk: a raw clone of its last committed state in the jail, a drive after the others;
        released (discarded) on unwind."""
        plan, machine = self.sticky, self.machine
        if plan is None:
            return
        store = machine.sticky_store = self.vmm.sticky_store
        for i, request in enumerate(plan.disks):
            name = f"sticky-{i}.ext4"
            checkout = await asyncio.to_thread(
                store.checkout, plan.org, plan.repo, request, self.vm_id, self.jail.host(name), raw=True
            )
            self.cleanup.push(
                f"sticky disk {request.name}", functools.partial(asyncio.to_thread, store.release, checkout)
            )
            machine.sticky.append(checkout)
            self.jail.own(name)
            machine.drives.append(disks.FcDrive(f"sticky_{i}", name, f"smith-sticky-{i}", mount=request.path))

    def _fill_chroot(self) -> None:
        """Images linked in (copied across filesystems: may take a while, hence a thread), per-VM files made."""
        jail = self.jail
        self.save_state()
        version = self.version
        if self.snapshot is None:
            jail.link((version.kernel if version else None) or self.config.kernel, KERNEL)
        else:
            jail.link(self.snapshot.vmstate, VMSTATE)
            jail.link(self.snapshot.mem, MEMFILE)
        jail.link(self.config.rootfs, INITRD if self.config.initramfs else ROOTFS)
        if self.snapshot is None:
            cache = self.config.disk_cache or self.config.chroot_base / "disks"
            root = version.rootfs if version else None
            self.machine.drives = disks.make_drives(jail, root, self.shape.disk_mib, cache)
        else:  # the template's drives, where it had them (a restored guest has them mounted already)
            for saved in self.snapshot.disks:
                vmdisks.raw_clone(saved, jail.host(saved.name))
                jail.own(saved.name)
        jail.new_file(LOG)
        jail.new_file(METRICS)

    async def network(self) -> None:
        slot = await self.vmm.network.acquire(self.vm_id)
        self.machine.slot = slot
        network = self.vmm.network

        async def release() -> None:
            await network.release(slot)

        self.cleanup.push("network", release)
        dns = guest_resolver(self.config.dns) or FALLBACK
        self.machine.net = {"ip": f"{slot.guest_ip}/{slot.prefix}", "gw": slot.gateway_ip, "mac": slot.mac, "dns": dns}
        self.state["slot"] = asdict(slot)
        self.save_state()

    async def process(self) -> None:
        c = self.config
        machine = self.machine
        slot = machine.slot
        self.jail = self.vmm._jail(machine.name, netns=slot.netns if slot else "", shape=self.shape)
        machine.jail = self.jail
        machine.jailer_command = self.jail.command()
        if c.use_jailer:
            argv = machine.jailer_command
        else:
            sock = str(self.jail.host(API_SOCKET))
            argv = [str(c.firecracker_bin), "--api-sock", sock, "--id", machine.name, *self.vmm._limits()]
        machine.command = argv
        stderr = (self.jail.dir / "stderr.log").open("ab")
        read_fd, write_fd = console_pipe()  # the serial console; Firecracker drops what nobody reads
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=stderr,
                start_new_session=True,
                env=minimal_env(),  # never the agent's credentials (the jailer passes its env on to firecracker)
            )
        except OSError as exc:
            os.close(read_fd)
            raise VMError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            stderr.close()
            os.close(write_fd)
        machine.process = proc

        async def kill() -> None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            if machine.console is not None:
                await machine.console.close()

        self.cleanup.push("process", kill)
        self.state["pid"] = proc.pid
        self.save_state()
        try:
            machine.console = await open_console(read_fd, on_event=machine.guest_event)  # drained from now on
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(read_fd)
            raise

    async def socket(self) -> None:
        machine = self.machine
        sock = self.jail.host(API_SOCKET)
        try:
            await wait_for_socket(sock, within=self.config.socket_timeout, process=machine.process)
        except SmithError as exc:
            exc.message += _stderr_tail(self.jail.dir / "stderr.log")
            exc.args = (exc.message,)
            raise
        client = FirecrackerClient(sock)
        machine.client = client

        async def close() -> None:
            await client.aclose()
            sock.unlink(missing_ok=True)

        self.cleanup.push("socket", close)

    async def logging(self) -> None:
        api = self.machine.api
        await api.put_logger(Logger(log_path=self.path(LOG), level=self.config.log_level, show_level=True))
        await api.put_metrics(Metrics(metrics_path=self.path(METRICS)))

    async def machine_config(self) -> None:
        await self.machine.api.put_machine_config(
            MachineConfiguration(vcpu_count=self.shape.vcpus, mem_size_mib=self.shape.memory_mib, smt=False)
        )

    async def boot_source(self) -> None:
        args = self.config.boot_args
        slot = self.machine.slot
        if slot is not None:  # the image's init configures eth0 from these (the kernel has no ip= of its own)
            net = self.machine.net
            args += f" smith.ip={net['ip']} smith.gw={net['gw']} smith.dns={net['dns']}"
        args += disks.boot_args(self.machine.drives, first=0 if self.config.initramfs else 1)
        self.machine.boot_args = args
        initrd = self.path(INITRD) if self.config.initramfs else None
        await self.machine.api.put_boot_source(
            BootSource(kernel_image_path=self.path(KERNEL), boot_args=args, initrd_path=initrd)
        )

    async def drives(self) -> None:
        api = self.machine.api
        if not self.config.initramfs:  # Firecracker then adds root=/dev/vda ro: the kernel must mount it itself
            await api.put_drive(
                Drive(drive_id="rootfs", path_on_host=self.path(ROOTFS), is_root_device=True, is_read_only=True)
            )
        for drive in self.machine.drives:  # in the guest's order: vda, vdb, ...
            await api.put_drive(
                Drive(
                    drive_id=drive.drive_id,
                    path_on_host=self.path(drive.file),
                    is_root_device=False,
                    is_read_only=drive.read_only,
                )
            )

    async def network_interface(self) -> None:
        slot = self.machine.slot
        if slot is None:
            raise VMError("no network slot: MMDS, the only way a job reaches the guest, needs a network interface")
        await self.machine.api.put_network_interface(
            NetworkInterface(iface_id=IFACE, host_dev_name=slot.tap, guest_mac=slot.mac)
        )

    async def mmds(self) -> None:
        await self.machine.api.put_mmds_config(
            MmdsConfig(version="V2", network_interfaces=[IFACE], ipv4_address=MMDS_ADDRESS)
        )

    async def vsock(self) -> None:
        if self.config.vsock:
            await self._listen_for_events()
            await self.machine.api.put_vsock(Vsock(guest_cid=self.vmm._next_cid(), uds_path=self.path(VSOCK)))

    async def _listen_for_events(self) -> None:
        """Listen on ``<uds_path>_<port>`` (in the chroot) before the guest can connect: events come over vsock."""
        console = self.machine.console
        assert console is not None
        listener = EventListener(events_socket(self.jail.host(VSOCK)), console)
        await listener.start(owner=(self.config.uid, self.config.gid) if self.config.use_jailer else None)
        self.cleanup.push("events", listener.close)
        self.machine.channel = listener

    async def start(self) -> None:
        """InstanceStart answers 204 before the kernel runs: wait for the guest agent's ready line, or the death
        of the process (a panic with reboot=k, panic=1 exits Firecracker)."""
        machine = self.machine
        await machine.api.start()
        machine.started = True
        console = machine.console
        assert console is not None
        ready = asyncio.ensure_future(console.ready.wait())
        closed = asyncio.ensure_future(console.closed.wait())
        try:
            await asyncio.wait({ready, closed}, timeout=self.config.ready_timeout, return_when="FIRST_COMPLETED")
        finally:
            ready.cancel()
            closed.cancel()
        if console.ready.is_set():
            return
        if console.closed.is_set():
            if machine.process is not None:
                await machine.process.wait()
            raise machine.died("died while booting")
        raise VMError(
            f"VM {self.vm_id}: no sign of the guest agent {self.config.ready_timeout:.0f} s after start; "
            f"console: {console.tail() or '(nothing)'}"
        )

    async def load_snapshot(self) -> None:
        assert self.snapshot is not None
        slot = self.machine.slot
        overrides = [NetworkOverride(iface_id=IFACE, host_dev_name=slot.tap)] if slot else None
        vsock = None
        if self.config.vsock:  # the template's device, its socket moved into this VM's chroot
            await self._listen_for_events()
            vsock = VsockOverride(uds_path=self.path(VSOCK))
        await self.machine.api.load_snapshot(
            SnapshotLoadParams(
                snapshot_path=self.path(VMSTATE),
                mem_backend=MemoryBackend(backend_type="File", backend_path=self.path(MEMFILE)),
                network_overrides=overrides,
                vsock_override=vsock,
                resume_vm=True,
            )
        )
        self.machine.started = True
        if not self.machine.alive():
            raise self.machine.died("died on restore")


NO_CHANNEL = "workflow steps go over the guest's vsock channel, and the serial console is one-way"


async def stepping_channel(machine: FirecrackerMachine) -> EventListener:
    """The guest agent's vsock connection, once it has made it (after reading its config): the channel steps go
    over. ``VMError`` when there is none: vsock is off, or the guest's events came on the console (its kernel
    has no vsock), or the guest is gone."""
    channel, console = machine.channel, machine.console
    if channel is None or console is None:
        raise VMError(f"VM {machine.id} cannot run a workflow job: {NO_CHANNEL} (this backend has vsock turned off)")
    if not channel.connected.is_set():
        waits = [asyncio.ensure_future(e.wait()) for e in (channel.connected, console.on_console, console.closed)]
        try:
            await asyncio.wait(waits, return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
    if channel.connected.is_set():
        return channel
    if console.on_console.is_set():
        raise VMError(
            f"VM {machine.id} cannot run a workflow job: {NO_CHANNEL} (the guest sent its events on the console: "
            "its kernel has no vsock, or it could not connect)"
        )
    raise machine.died("ended before its guest agent connected")


def _stderr_tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        tail = path.read_bytes()[-500:].decode("utf-8", "replace").strip()
        if tail:
            return f" (stderr: {tail})"
    return ""


def _runs_vm(pid: int, name: str) -> bool:
    """True when ``pid`` is still a process started for VM ``name`` (guards against PID reuse)."""
    try:
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
