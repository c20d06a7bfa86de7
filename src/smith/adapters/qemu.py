"""The QEMU backend: each job in a ``qemu-system-x86_64 -M microvm`` guest with virtio-mmio devices.

A VM is booted as an ordered list of named steps, each pushing its undo onto a cleanup stack that unwinds in
reverse when a later step fails: work dir -> network slot -> qemu process -> event channel -> QMP -> guest ready.

Channels (no vsock: ``/dev/vhost-vsock`` is often missing, and it is here):

- ``smith.config``: a virtio-serial port; the host writes one JSON line, an envelope around the GuestConfig
  with the host's clock and an entropy seed (see the guest agent). Never the kernel command line.
- ``smith.events``: a second virtio-serial port; the guest agent writes GuestEvent JSON lines to it.
- the serial console goes to ``console.log`` in the VM's directory (kernel messages, for diagnosis).
- QMP on a Unix socket: quit, and migrate for snapshots.

Acceleration: ``-accel kvm`` only when KVM can boot this guest, which is checked by a real boot of the
image under KVM with a short deadline; a success is remembered in ``<base_dir>/accel.json``, a failure never
(it is probed again later). Otherwise ``-accel tcg``, software emulation, with a loud warning. A nested KVM (PVM)
may open /dev/kvm fine and still fail to boot a normal kernel.

Snapshots: ``prepare_snapshot(shape)`` boots a template guest until its agent waits for a config, saves it
with QMP ``migrate`` to a file and stops it. ``boot()`` then starts each VM of that shape from the file with
``-incoming fd:N`` (an inherited descriptor of the file: a confined QEMU cannot spawn): the restored guest is
already waiting, and gets its own config (and a fresh clock and seed) on its own sockets.

Confinement: every job's QEMU runs under ``-sandbox`` (seccomp) and, when the agent is root, drops to an
unprivileged uid in an empty chroot once its devices are open (``QemuConfig.confine``, ``run_as``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from smith import loadscale
from smith.adapters import vmdisks
from smith.adapters.cgroups import Cgroups, JobCgroup, Limits
from smith.adapters.childenv import minimal_env
from smith.adapters.resolver import FALLBACK, guest_resolver
from smith.adapters.stickydisks import Checkout, StickyDisks, settle
from smith.asyncutil import CleanupStack
from smith.domain.sticky import StickyPlan
from smith.domain.vms import Backend, VMShape
from smith.errors import SmithError, VMError
from smith.logging import get_logger
from smith.rootfs.store import Built
from smith.wire.guest import GuestConfig, GuestEvent

log = get_logger("smith.qemu")

PREFIX = "qemu-"
READY = b'"smith": "ready"'
LINE_LIMIT = 1 << 20
_WATCH_STEP = 0.25  # how often a boot's watchdog looks at the console and the load
DEFAULT_APPEND = "console=ttyS0 panic=-1 quiet"  # no i8042.* here: probing a missing i8042 hangs boot
# Debian's kernel finds the virtio-mmio devices in microvm's ACPI tables (its virtio_mmio module has no
# `device=` parameter). A kernel without ACPI (`smith image kernel`) gets acpi=off: QEMU then names each device
# on the kernel command line (virtio_mmio.device=...), as Firecracker does (see machine_for).
MACHINE = "microvm,x-option-roms=off"
# Under TCG a kernel without ACPI (Smith's) takes its timer interrupts from microvm's PIT, not the local APIC
# timer: the kernel calibrates that timer against jiffies and checks it (0.1 s each, longer on a loaded host;
# TCG offers no TSC-deadline timer and 6.1 no parameter to skip the calibration). Cold boot to the first line
# 2.1 -> 1.7 s (bench/vms.py). Not with ACPI (Debian's kernel): microvm's ACPI is hardware-reduced, the kernel
# then sets up no PIT, and without the APIC timer it has no timer at all (the boot hangs).
NO_ACPI_TCG_APPEND = " noapictimer"


class NetSlotLike(Protocol):
    """What the QEMU backend needs of a network slot (ports.Network's NetSlot has these fields)."""

    tap: str
    mac: str
    guest_ip: str
    gateway_ip: str
    netmask: str


class NetworkLike(Protocol):
    async def acquire(self, vm_id: str) -> Any: ...

    async def release(self, slot: Any) -> None: ...


@dataclass(frozen=True)
class QemuConfig:
    kernel: Path
    initrd: Path | None = None
    rootfs: Path | None = None  # a virtio-blk disk, read-only (needs a kernel/initrd that mounts it)
    # `smith rootfs` output_dir: each VM boots the version active when it boots, from its ext4 root disk under
    # a per-VM qcow2 layer (adapters/vmdisks.py); the initramfs switches to it.
    rootfs_dir: Path | None = None
    scratch: bool = True  # with a rootfs version: a per-VM scratch disk of the shape's disk_mib, at /work
    sticky_dir: Path | None = None  # sticky disks (adapters/stickydisks.py); None: base_dir/sticky
    sticky_quota_bytes: int = 50 << 30  # per org, allocated bytes
    shutdown_timeout: float = 30.0  # a job's guest with sticky disks has this long to power off cleanly
    qemu_bin: str = "qemu-system-x86_64"
    accel: str = "auto"  # auto, kvm or tcg
    append: str = DEFAULT_APPEND
    machine: str | None = None  # -M; None: MACHINE, with acpi=off for a kernel built without ACPI
    # Waits below are in seconds of an idle machine (smith.loadscale.Budget): they stretch with the load.
    boot_timeout: float = 120.0
    life_timeout: float = 15.0  # a cold guest whose console is still empty by then is stuck: boot it again
    boot_attempts: int = 3
    kvm_probe_timeout: float = 20.0
    kvm_retry_seconds: float = 600.0  # a failed KVM probe is tried again this much later (never cached)
    kvm_device: Path = Path("/dev/kvm")
    stop_timeout: float = 5.0
    # Confinement of every job's QEMU (not of a template's, whose QMP migrate spawns `cat`): a seccomp filter
    # (-sandbox: no spawning, no privilege or resource changes, no obsolete calls) and, when the agent is root,
    # QEMU drops to ``run_as`` (uid:gid) inside an empty, read-only chroot once its devices are open.
    confine: bool = True
    run_as: str = "65534:65534"
    console_max_bytes: int = 8 << 20  # a VM's console.log is cut when it grows past this (checked every second)
    console_check_seconds: float = 1.0
    dns: str | None = None  # the guests' resolver (smith.adapters.resolver.guest_resolver); None: none


class QMP:
    """A minimal QMP client: one command at a time, events kept aside."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: Path) -> QMP:
        return await cls.start(*await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT))

    @classmethod
    async def start(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> QMP:
        """QMP on an open connection: the greeting, then capabilities negotiation."""
        qmp = cls(reader, writer)
        greeting = await qmp._read()
        if "QMP" not in greeting:
            raise VMError(f"not a QMP greeting: {greeting}")
        await qmp.execute("qmp_capabilities")
        return qmp

    async def _read(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            raise VMError("QMP connection closed")
        return dict(json.loads(line))

    async def execute(self, command: str, **arguments: Any) -> Any:
        async with self._lock:
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self.writer.write(json.dumps(msg).encode() + b"\n")
            await self.writer.drain()
            while True:
                reply = await self._read()
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise VMError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
                return reply.get("return")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass
class Snapshot:
    path: Path
    shape: VMShape
    key: str
    rootfs: str | None = None  # the rootfs version the template booted: restored only while it is active
    layers: dict[str, Path] = field(default_factory=dict)  # the template's disk layers at the save, by serial


@dataclass(frozen=True)
class How:
    """How to boot: ``snapshot`` None = from the shape's template if there is one, False = cold and unconfined
    (a template being made); ``sticky`` = with these sticky disks (always cold); ``accel`` = under this
    accelerator."""

    snapshot: Snapshot | bool | None = None
    sticky: StickyPlan | None = None
    accel: str | None = None  # this accelerator, not the chosen one (the KVM probe)
    retry: bool = True  # boot again after a boot with no sign of life (not for the probe: one answer is enough)


_COLD_OR_RESTORED = How()


@dataclass
class QemuMachine:
    id: str
    dir: Path
    proc: asyncio.subprocess.Process
    qmp: QMP
    events_reader: asyncio.StreamReader
    events_writer: asyncio.StreamWriter
    config_writer: asyncio.StreamWriter
    cleanup: CleanupStack
    restored: bool = False
    boot_seconds: float = 0.0
    image: str | None = None  # the rootfs version this VM booted (None: the initramfs alone)
    sticky: list[Checkout] = field(default_factory=list)
    sticky_store: StickyDisks | None = None
    shutdown_timeout: float = 30.0
    _assigned: bool = False
    _stopped: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def alive(self) -> bool:
        return self.proc.returncode is None

    async def assign(self, config: GuestConfig) -> None:
        if self._assigned:
            raise VMError(f"VM {self.id} already has a job")
        self._assigned = True
        envelope = {"config": config.model_dump(mode="json"), "now": time.time(), "seed": secrets.token_hex(32)}
        try:
            self.config_writer.write(orjson.dumps(envelope) + b"\n")
            await self.config_writer.drain()
        except OSError as exc:
            raise VMError(f"VM {self.id} died before it got its job") from exc

    async def send(self, message: dict[str, object]) -> None:
        """One steps-mode command to the guest agent, on the config port."""
        try:
            self.config_writer.write(orjson.dumps(message) + b"\n")
            await self.config_writer.drain()
        except OSError as exc:
            raise VMError(f"VM {self.id} is gone") from exc

    async def events(self) -> AsyncIterator[GuestEvent]:
        while True:
            try:
                raw = await self.events_reader.readline()
            except ValueError:  # a line past the limit: the guest agent cuts its own lines, so this is noise
                continue
            except OSError:
                return
            if not raw:
                return
            if READY in raw:
                continue
            try:
                event = GuestEvent.model_validate(orjson.loads(raw))
            except (orjson.JSONDecodeError, ValidationError):
                event = GuestEvent(type="line", ts=time.time(), stream="system", line=raw.decode("utf-8", "replace"))
            yield event
            if event.type == "exit":
                return

    def host_logs(self) -> dict[str, Path]:
        return {}

    async def finish(self, succeeded: bool) -> list[str]:
        """After the job: commit its sticky disks if it succeeded and its guest powered off cleanly (it unmounts
        them first), else discard them. The names committed."""
        if not self.sticky or self.sticky_store is None:
            return []
        store = self.sticky_store
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), self.shutdown_timeout)
        return await settle(store, self.sticky, succeeded, self.proc.returncode == 0, self.id)

    async def stop(self) -> None:
        async with self._lock:
            if self._stopped:
                return
            self._stopped = True
            await self.cleanup.unwind()


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class QemuVMM:
    backend = Backend.QEMU

    def __init__(
        self,
        base_dir: Path,
        config: QemuConfig,
        network: NetworkLike | None = None,
        *,
        slowness: Callable[[], float] = loadscale.slowness,
        cgroups: Cgroups | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.cgroups = cgroups  # each VM's QEMU in a cgroup of its own (memory incl. swap, pids, cpu)
        self.cgroup_prefix = f"smith-{hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:8]}-"
        self.slowness = slowness
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.network = network
        self.snapshots: dict[tuple[int, int], Snapshot] = {}
        self._refreshing: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._accel: str | None = None if config.accel == "auto" else config.accel
        self._tcg_until = 0.0  # a failed KVM probe: emulation until then, then KVM is probed again
        self._qemu_version: str | None = None
        self._retemplating: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._accel_lock = asyncio.Lock()  # one KVM probe at a time; the others wait for its verdict
        for path in (config.kernel, config.initrd, config.rootfs):
            if path is not None and not Path(path).is_file():
                raise VMError(f"QEMU backend: {path} does not exist (build one with `smith image build`)")
        if config.rootfs_dir is not None and config.initrd is None:
            raise VMError(
                "QEMU backend: a rootfs version boots through the initramfs of `smith image build` (no initrd)"
            )
        if shutil.which(config.qemu_bin) is None:
            raise VMError(f"QEMU backend: no {config.qemu_bin} on PATH (apt-get install qemu-system-x86)")

    @classmethod
    def from_settings(cls, settings: Any, base_dir: Path, network: NetworkLike | None = None) -> QemuVMM:
        """From the agent's settings: its kernel/rootfs, else the image `smith image build` left in data_dir."""
        kernel, initrd, rootfs = settings.agent_kernel, None, settings.agent_rootfs
        if rootfs is not None and _is_cpio(Path(rootfs)):
            initrd, rootfs = rootfs, None
        if kernel is None:
            from smith.images.refresh import current_image

            image = current_image(settings.data_dir)
            kernel, initrd = image.vmlinux, image.initrd
        dns = guest_resolver(settings.agent_network_dns)
        if network is not None and dns is None:
            dns = FALLBACK
            log.warning("the host names no resolver a guest can reach; set SMITH_AGENT_NETWORK_DNS", using=FALLBACK)
        config = QemuConfig(
            kernel=kernel,
            initrd=initrd,
            rootfs=rootfs,
            qemu_bin=settings.agent_qemu_bin,
            dns=dns,
            rootfs_dir=getattr(settings, "agent_rootfs_dir", None),
            sticky_dir=getattr(settings, "agent_sticky_dir", None),
            sticky_quota_bytes=getattr(settings, "agent_sticky_quota_mib", 51200) << 20,
        )
        cgroups = Cgroups.detect(settings.agent_cgroup_parent) if os.geteuid() == 0 else None
        return cls(base_dir, config, network, cgroups=cgroups)

    # -- acceleration ------------------------------------------------------------------------------------------

    async def accel(self) -> str:
        """kvm if KVM boots this guest, else tcg (software emulation, said loudly each time it is chosen).

        Only a positive verdict is remembered (per image, in ``accel.json``): a failed probe (the user not yet
        in the kvm group, a unit hiding /dev/kvm, a slow first boot) is tried again ``kvm_retry_seconds`` later,
        and by the next agent, instead of leaving the host on emulation for good."""
        if self._accel is not None:
            return self._accel
        if self._tcg_until > time.monotonic():
            return "tcg"
        async with self._accel_lock:
            if self._accel is None and self._tcg_until <= time.monotonic():
                await self._probe_accel()
            return self._accel or "tcg"

    async def _probe_accel(self) -> None:
        verdict_file = self.base_dir / "accel.json"
        key = self._image_key()
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(verdict_file.read_text())
            if saved.get("key") == key and saved.get("accel") == "kvm":
                self._accel = "kvm"
                return
        why = f"{self.config.kvm_device} is missing or not usable by this user (is it in the kvm group?)"
        if os.access(self.config.kvm_device, os.R_OK | os.W_OK):
            try:
                probe = VMShape("kvm-probe", 1, 256)
                machine = await self._boot(
                    probe, "kvm-probe", self.config.kvm_probe_timeout, How(accel="kvm", retry=False)
                )
                await machine.stop()
            except VMError as exc:
                why = f"KVM is present but a guest did not boot under it ({exc.message[:200]})"
            else:
                self._accel = "kvm"
                verdict_file.write_text(json.dumps({"key": key, "accel": "kvm", "why": "a probe guest booted"}))
                log.info("qemu acceleration chosen", accel="kvm", why="a probe guest booted under KVM")
                return
        verdict_file.unlink(missing_ok=True)
        self._tcg_until = time.monotonic() + self.config.kvm_retry_seconds
        log.warning(
            "QEMU RUNS UNDER SOFTWARE EMULATION (tcg): jobs are 10-50x slower; KVM is probed again later",
            why=why,
            retry_seconds=self.config.kvm_retry_seconds,
        )

    def _image_key(self) -> str:
        h = hashlib.sha256()
        for path in (self.config.kernel, self.config.initrd, self.config.rootfs):
            if path is not None:
                st = Path(path).stat()
                h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        return h.hexdigest()[:16]

    # -- the command line ----------------------------------------------------------------------------------------

    def command(
        self,
        vm_dir: Path,
        shape: VMShape,
        accel: str,
        slot: Any | None,
        incoming: str | None,
        *,
        confined: bool = True,
        disks: list[vmdisks.Disk] | None = None,
        kernel: Path | None = None,
    ) -> list[str]:
        c = self.config
        append = c.append
        disks = disks or []
        if any(d.serial == vmdisks.ROOT_SERIAL for d in disks):  # the initramfs switches to this disk
            append += f" smith.root={vmdisks.ROOT_SERIAL}"
        if slot is not None:  # the guest's init configures eth0 from these
            append += f" smith.ip={slot.guest_ip}/{_prefix(slot.netmask)} smith.gw={slot.gateway_ip}"
            if c.dns:
                append += f" smith.dns={c.dns}"
        if not confined:  # a template being made: its agent imports before ready what restored jobs may need
            append += " smith.template"
        append += tsc_args(host_tsc_khz() if accel == "tcg" else None)
        machine = c.machine or machine_for(kernel or c.kernel)
        if accel == "tcg" and "acpi=off" in machine:
            append += NO_ACPI_TCG_APPEND
        argv = [
            shutil.which(c.qemu_bin) or c.qemu_bin,
            "-M",
            machine,
            "-accel",
            accel,
            "-m",
            str(shape.memory_mib),
            "-smp",
            str(shape.vcpus),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-name",
            f"smith-{vm_dir.name}",
            "-kernel",
            str(kernel or c.kernel),
            "-append",
            append,
            "-chardev",
            f"file,id=console,path={vm_dir / 'console.log'},append=on",  # append: the agent may cut it (see _cap)
            "-serial",
            "chardev:console",
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"socket,id=cfg,path={vm_dir / 'config.sock'},server=on,wait=off",
            "-device",
            "virtserialport,chardev=cfg,name=smith.config",
            "-chardev",
            f"socket,id=ev,path={vm_dir / 'events.sock'},server=on,wait=off",
            "-device",
            "virtserialport,chardev=ev,name=smith.events",
            "-device",
            "virtio-rng-device",
            "-qmp",
            f"unix:{vm_dir / 'qmp.sock'},server=on,wait=off",
        ]
        if accel == "kvm":
            argv += ["-cpu", "host"]
        if c.initrd is not None:
            argv += ["-initrd", str(c.initrd)]
        if c.rootfs is not None:
            argv += [
                "-drive",
                f"id=root,file={c.rootfs},format=raw,if=none,readonly=on",
                "-device",
                "virtio-blk-device,drive=root",
            ]
        for disk in disks:
            argv += disk.qemu_args()
            if disk.mount:
                argv[argv.index("-append") + 1] += f" smith.mount.{disk.serial}={disk.mount}"
        if slot is not None:
            argv += [
                "-netdev",
                f"tap,id=net0,ifname={slot.tap},script=no,downscript=no",
                "-device",
                f"virtio-net-device,netdev=net0,mac={slot.mac}",
            ]
        if incoming is not None:
            argv += ["-incoming", incoming]
        if confined and c.confine:
            argv += ["-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"]
            if os.geteuid() == 0:  # set*id is harmless once QEMU has dropped to run_as: it has no capability left
                argv += ["-runas", c.run_as, "-chroot", str(self._empty_root())]
        return argv

    def _empty_root(self) -> Path:
        """An empty directory QEMU is chrooted into: nothing of the host's files stays in its reach."""
        root = self.base_dir / "empty"
        root.mkdir(mode=0o555, exist_ok=True)
        root.chmod(0o555)
        return root

    # -- boot ------------------------------------------------------------------------------------------------

    async def boot(self, shape: VMShape, vm_id: str, *, sticky: StickyPlan | None = None) -> QemuMachine:
        """A VM of ``shape``; with ``sticky``, booted cold with those disks (a warm VM cannot grow disks)."""
        return await self._boot(shape, vm_id, self.config.boot_timeout, How(sticky=sticky))

    async def _boot(self, shape: VMShape, vm_id: str, wait_s: float, how: How = _COLD_OR_RESTORED) -> QemuMachine:
        """Restore from the shape's template when there is one (a failed restore boots this VM cold and remakes
        the template), else boot cold. Under software emulation an early kernel now and then stalls before it
        prints anything (seen here under heavy host load): such a boot is thrown away and tried again, a bounded
        number of times."""
        snapshot = how.snapshot
        if snapshot is None and self.network is None and how.sticky is None:  # networked VMs boot cold
            snapshot = self.snapshots.get((shape.vcpus, shape.memory_mib))
        if isinstance(snapshot, Snapshot):
            try:
                return await self._boot_once(shape, vm_id, wait_s, replace(how, snapshot=snapshot))
            except VMError as exc:  # a stale or broken template: this VM boots cold, the template is remade
                self._restore_failed(snapshot, exc)
            how = replace(how, snapshot=None)
        for attempt in range(1, (self.config.boot_attempts if how.retry else 1) + 1):
            try:
                return await self._boot_once(shape, vm_id, wait_s, how)
            except _NoSignOfLife as exc:
                log.warning("qemu guest showed no sign of life; booting again", vm_id=vm_id, attempt=attempt)
                last = exc
        raise VMError(f"VM {vm_id}: {last}", retryable=True)

    async def _boot_once(self, shape: VMShape, vm_id: str, wait_s: float, how: How) -> QemuMachine:
        """Boot steps with a cleanup stack. ``how.snapshot``: a template to restore (``_boot`` chose it), None =
        cold, False = cold and unconfined (a template being made)."""
        snapshot, sticky = how.snapshot, how.sticky
        version = self._version()
        snap = snapshot if isinstance(snapshot, Snapshot) else None
        if sticky is not None:
            snap = None  # its disks are its own: never a template's
        if snap is not None and (snap.rootfs != _name(version) or snap.shape.disk_mib != shape.disk_mib):
            self._refresh_template(snap.shape)  # another version was activated since: this one boots cold
            snap = None
        accel = how.accel or await self.accel()
        started = time.monotonic()
        cleanup = CleanupStack("qemu")
        vm_dir = self.base_dir / f"{PREFIX}{vm_id}"
        try:
            # 1. work dir (its sockets' paths must fit a sockaddr_un)
            if len(str(vm_dir / "events.sock")) > 100:
                raise VMError(f"QEMU backend: {self.base_dir} is too deep for Unix socket paths; use a shorter one")
            try:
                vm_dir.mkdir(parents=True, mode=0o700)  # its console and sockets are nobody else's
            except FileExistsError as exc:
                raise VMError(f"VM {vm_id} exists already") from exc
            cleanup.push("work dir", lambda: asyncio.to_thread(shutil.rmtree, vm_dir, True))
            # 1b. disks, in the work dir (removed with it)
            disks = await asyncio.to_thread(self._disks, vm_dir, shape, version, snap)
            checkouts = await self._checkout(sticky, vm_id, vm_dir, version, cleanup)
            disks += [
                vmdisks.Disk(f"smith-sticky-{i}", c.layer, "qcow2", cache="writeback", mount=c.request.path)
                for i, c in enumerate(checkouts)
            ]
            # 2. network slot
            slot = None
            if self.network is not None:
                slot = await self.network.acquire(vm_id)
                net = self.network
                cleanup.push("network slot", lambda: net.release(slot))
            # 3. its cgroup, then qemu (a restored VM reads its state from an inherited descriptor: a confined QEMU
            # cannot spawn)
            group = await self._cgroup(vm_id, shape, accel)
            if group is not None:
                cgroup = group
                cleanup.push("cgroup", lambda: asyncio.to_thread(cgroup.remove))
            state_fd = os.open(snap.path, os.O_RDONLY | os.O_CLOEXEC) if snap else None
            incoming = f"fd:{state_fd}" if state_fd is not None else None
            disk_fds: list[int] = []
            fd_args: list[str] = []
            if snap is not None and disks:  # see vmdisks.as_fdsets
                disks, disk_fds, fd_args = vmdisks.as_fdsets(disks)
            argv = (
                self.command(
                    vm_dir,
                    shape,
                    accel,
                    slot,
                    incoming,
                    confined=snapshot is not False,
                    disks=disks,
                    kernel=version.kernel if version else None,
                )
                + fd_args
            )
            (vm_dir / "cmdline").write_text(shlex.join(argv))
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=(vm_dir / "qemu.err").open("wb"),
                    start_new_session=True,
                    env=minimal_env(),  # never the agent's credentials
                    pass_fds=((state_fd,) if state_fd is not None else ()) + tuple(disk_fds),
                    preexec_fn=group.enter if group is not None else None,
                )
            except OSError as exc:
                raise VMError(f"cannot start {self.config.qemu_bin}: {exc}") from exc
            finally:
                for fd in ([state_fd] if state_fd is not None else []) + disk_fds:
                    os.close(fd)
            (vm_dir / "pid").write_text(str(proc.pid))
            cleanup.push("qemu process", lambda: self._kill(proc, vm_dir))
            # 4. event channel: connected before the guest can write, so nothing it says is lost
            reader, writer = await self._connect(vm_dir / "events.sock", proc, vm_dir)
            cleanup.push("event channel", lambda: _close(writer))
            # The config port is connected from the start too: the guest then blocks in read() until its job
            # comes, instead of polling a port whose host side is closed (and missing what arrives meanwhile).
            _, config_writer = await self._connect(vm_dir / "config.sock", proc, vm_dir)
            cleanup.push("config channel", lambda: _close(config_writer))
            # 5. QMP
            # Connected with the same retries as the channels: QEMU binds a socket before it listens on it, and a
            # connect in between is refused (seen as a restore failing "Connection refused" now and then).
            qmp = await self._open_qmp(vm_dir, proc)
            cleanup.push("qmp", qmp.close)
            # 6. ready: a cold guest announces itself; a restored one was waiting already when it was saved
            if snap is not None:
                await self._wait_incoming(qmp, proc, vm_dir, wait_s)
            else:
                await self._wait_ready(reader, proc, vm_dir, wait_s)
        except OSError as exc:  # qemu went away under us (a socket reset, a refused connection)
            tail = _tail(vm_dir)
            await cleanup.unwind()
            raise VMError(f"VM {vm_id}: qemu failed while booting ({exc}): {tail}") from exc
        except BaseException:
            await cleanup.unwind()
            raise
        machine = QemuMachine(
            vm_id, vm_dir, proc, qmp, reader, writer, config_writer, cleanup, restored=snap is not None
        )
        watcher = asyncio.ensure_future(self._cap_console(vm_dir / "console.log", vm_id))
        cleanup.push("console cap", lambda: _cancel(watcher))
        machine.boot_seconds = time.monotonic() - started
        machine.image = _name(version)
        machine.sticky, machine.sticky_store = checkouts, self.sticky_store
        machine.shutdown_timeout = self.config.shutdown_timeout
        log.info(
            "qemu vm ready",
            vm_id=vm_id,
            accel=accel,
            restored=snap is not None,
            seconds=machine.boot_seconds,
            rootfs=machine.image,
        )
        return machine

    async def _cgroup(self, vm_id: str, shape: VMShape, accel: str) -> JobCgroup | None:
        """A cgroup for this VM's QEMU: the guest's memory plus QEMU's own (more under emulation: its translation
        cache), no swap, a bounded thread count, and its vCPUs plus headroom for QEMU's own threads."""
        if self.cgroups is None:
            return None
        overhead = 256 + (512 if accel == "tcg" else 0)
        limits = Limits((shape.memory_mib + overhead) << 20, 1024, shape.vcpus + 0.5)
        return await asyncio.to_thread(self.cgroups.create, self.cgroup_prefix + vm_id, limits)

    async def _cap_console(self, path: Path, vm_id: str) -> None:
        """The guest writes the console (a job can too): cut it whenever it grows past ``console_max_bytes``."""
        cut = 0
        while True:
            await asyncio.sleep(self.config.console_check_seconds)
            with contextlib.suppress(OSError):
                if os.stat(path).st_size > self.config.console_max_bytes:
                    os.truncate(path, 0)
                    cut += 1
                    if cut == 1:
                        log.warning("qemu console log cut: the guest writes too much", vm_id=vm_id)

    def _version(self) -> Built | None:
        """The rootfs version active now (resolved once: this VM keeps it whatever is activated later)."""
        return vmdisks.active_version(self.config.rootfs_dir, "QEMU")

    async def close(self) -> None:
        """Stop template refreshes still running (their boot unwinds: no QEMU is left)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _refresh_template(self, shape: VMShape) -> None:
        """Make a template of the now active version in the background (once at a time per shape)."""
        key = (shape.vcpus, shape.memory_mib)
        if key in self._refreshing:
            return

        async def refresh() -> None:
            try:
                await self.prepare_snapshot(shape)
                log.info("qemu template of the active rootfs ready", vcpus=shape.vcpus, memory_mib=shape.memory_mib)
            except (SmithError, OSError) as exc:
                log.warning("qemu template refresh failed; VMs boot cold", error=str(exc))
            finally:
                self._refreshing.pop(key, None)

        self._refreshing[key] = asyncio.ensure_future(refresh())

    @property
    def sticky_store(self) -> StickyDisks:
        return StickyDisks(self.config.sticky_dir or self.base_dir / "sticky", self.config.sticky_quota_bytes)

    async def _checkout(
        self, sticky: StickyPlan | None, vm_id: str, vm_dir: Path, version: Built | None, cleanup: CleanupStack
    ) -> list[Checkout]:
        """Each sticky disk as a layer over its last committed state; released (discarded) on unwind."""
        if sticky is None or not sticky.disks:
            return []
        if version is None:
            raise VMError("sticky disks need a rootfs version to boot (SMITH_AGENT_ROOTFS_DIR)")
        store, checkouts = self.sticky_store, []
        for i, request in enumerate(sticky.disks):
            layer = vm_dir / f"sticky-{i}.qcow2"
            checkout = await asyncio.to_thread(store.checkout, sticky.org, sticky.repo, request, vm_id, layer)
            cleanup.push(f"sticky disk {request.name}", functools.partial(asyncio.to_thread, store.release, checkout))
            checkouts.append(checkout)
        return checkouts

    def _disks(self, vm_dir: Path, shape: VMShape, version: Built | None, snap: Snapshot | None) -> list[vmdisks.Disk]:
        """A root layer over the version's image and a scratch disk of ``disk_mib``: VMs of a rootfs version.
        A restored VM's layers start as copies of its template's (its guest has them mounted already)."""
        if version is None:
            return []
        scratch = shape.disk_mib if self.config.scratch else None
        disks = vmdisks.qemu_disks(vm_dir, version.rootfs, scratch, self.base_dir / "disks")
        if snap is not None:
            for disk in disks:
                shutil.copyfile(snap.layers[disk.serial], disk.path)
        return disks

    async def _wait_socket(self, path: Path, proc: asyncio.subprocess.Process, vm_dir: Path) -> None:
        for _ in range(1000):
            if _exists(path):
                return
            if proc.returncode is not None:
                raise VMError(f"qemu exited early ({proc.returncode}): {_tail(vm_dir)}")
            await asyncio.sleep(0.01)
        raise VMError(f"qemu did not create {path.name}: {_tail(vm_dir)}")

    async def _connect(
        self, path: Path, proc: asyncio.subprocess.Process, vm_dir: Path
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self._wait_socket(path, proc, vm_dir)
        for _ in range(200):
            try:
                return await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
            except (ConnectionRefusedError, FileNotFoundError):
                await asyncio.sleep(0.01)
        raise VMError(f"cannot connect to {path}")

    async def _open_qmp(self, vm_dir: Path, proc: asyncio.subprocess.Process) -> QMP:
        return await QMP.start(*await self._connect(vm_dir / "qmp.sock", proc, vm_dir))

    async def _wait_ready(
        self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process, vm_dir: Path, wait_s: float
    ) -> None:
        async def ready() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    raise VMError(f"guest went away before it was ready: {_tail(vm_dir)}")
                if READY in line:
                    return

        async def watch() -> None:
            """Both limits are budgets: a loaded machine gets proportionally longer to show the same progress."""
            whole = loadscale.Budget(wait_s, self.slowness)
            life = loadscale.Budget(min(self.config.life_timeout, wait_s), self.slowness)
            alive, started, last = False, time.monotonic(), time.monotonic()
            while not whole.exhausted:
                await asyncio.sleep(_WATCH_STEP)
                now = time.monotonic()
                whole.spend(now - last)
                life.spend(now - last)
                last = now
                if not alive:
                    with contextlib.suppress(OSError):
                        alive = (vm_dir / "console.log").stat().st_size > 0
                    if not alive and life.exhausted:
                        raise _NoSignOfLife(
                            f"no console output within {now - started:.0f}s ({life.seconds:.0f}s stretched by load)"
                        )
            raise TimeoutError

        waiter = asyncio.ensure_future(ready())
        watchdog = asyncio.ensure_future(watch())
        try:
            done, _ = await asyncio.wait({waiter, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, watchdog):
                task.cancel()
            await asyncio.gather(waiter, watchdog, return_exceptions=True)
        first = waiter if waiter in done else watchdog
        exc = first.exception()
        if exc is None:
            return
        if isinstance(exc, TimeoutError):
            raise VMError(
                f"guest not ready within {wait_s:.0f}s (stretched by load): {_tail(vm_dir)}", retryable=True
            ) from exc
        if isinstance(exc, ValueError):
            raise VMError(f"garbage on the event channel: {exc}") from exc
        raise exc

    async def _wait_incoming(self, qmp: QMP, proc: asyncio.subprocess.Process, vm_dir: Path, wait_s: float) -> None:
        budget, last = loadscale.Budget(wait_s, self.slowness), time.monotonic()
        while not budget.exhausted:
            now = time.monotonic()
            budget.spend(now - last)
            last = now
            if proc.returncode is not None:
                raise VMError(f"qemu exited while restoring ({proc.returncode}): {_tail(vm_dir)}")
            status = await qmp.execute("query-status")
            if status.get("status") == "running":
                return
            if status.get("status") in ("paused", "postmigrate") and not status.get("running"):
                migrate = await qmp.execute("query-migrate")
                if migrate.get("status") == "completed" or status.get("status") == "paused":
                    await qmp.execute("cont")
                    continue
            if status.get("status") in ("internal-error", "shutdown", "guest-panicked"):
                raise VMError(f"restore failed: {status}: {_tail(vm_dir)}")
            await asyncio.sleep(0.01)
        raise VMError(
            f"restore did not finish within {wait_s:.0f}s (stretched by load): {_tail(vm_dir)}", retryable=True
        )

    async def _kill(self, proc: asyncio.subprocess.Process, vm_dir: Path) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), self.config.stop_timeout)

    # -- snapshots -------------------------------------------------------------------------------------------

    async def snapshot_key(self, shape: VMShape, accel: str, extra: str = "") -> str:
        """A template restores only into what saved it: the same image, shape, accelerator, QEMU build, host
        kernel and CPU model (a QEMU or kernel upgrade, or another CPU, makes a new template), and ``extra`` (the
        rootfs version and scratch size of VMs with disks)."""
        if self._qemu_version is None:
            self._qemu_version = await qemu_version(self.config.qemu_bin)
        host = f"{self._qemu_version}:{os.uname().release}:{cpu_model()}"
        return hashlib.sha256(
            f"{self._image_key()}:{shape.vcpus}:{shape.memory_mib}:{accel}:{host}{extra}".encode()
        ).hexdigest()

    def _restore_failed(self, snap: Snapshot, error: VMError) -> None:
        """Forget a template that did not restore, and make a new one in the background."""
        log.warning("qemu restore failed; cold boot, new template", snapshot=snap.path.name, error=error.message[:300])
        shape_key = (snap.shape.vcpus, snap.shape.memory_mib)
        if self.snapshots.get(shape_key) is snap:
            del self.snapshots[shape_key]
        snap.path.unlink(missing_ok=True)
        if shape_key not in self._retemplating:
            task = asyncio.ensure_future(self._retemplate(snap.shape))
            self._retemplating[shape_key] = task
            task.add_done_callback(lambda _: self._retemplating.pop(shape_key, None))

    async def _retemplate(self, shape: VMShape) -> None:
        try:
            await self.prepare_snapshot(shape)
        except VMError as exc:
            log.warning(
                "qemu template could not be made again",
                vcpus=shape.vcpus,
                memory_mib=shape.memory_mib,
                error=exc.message[:300],
            )

    async def prepare_snapshot(self, shape: VMShape) -> Snapshot:
        """Boot a template guest of this shape until it waits for a config, and save it for warm starts."""
        if self.network is not None:
            raise VMError("QEMU snapshots are for VMs without network (a NIC's addresses would be baked in)")
        accel = await self.accel()
        rootfs = _name(self._version())
        scratch = shape.disk_mib if rootfs and self.config.scratch else 0
        key = await self.snapshot_key(shape, accel, f":{rootfs}:{scratch}" if rootfs else "")
        snap_dir = self.base_dir / "snapshots"
        snap_dir.mkdir(exist_ok=True)
        stem = f"{shape.vcpus}x{shape.memory_mib}-{key[:16]}"
        path = snap_dir / f"{stem}.state"
        names = {vmdisks.ROOT_SERIAL: "root.qcow2", vmdisks.SCRATCH_SERIAL: "scratch.qcow2"}
        wanted = [vmdisks.ROOT_SERIAL] * bool(rootfs) + [vmdisks.SCRATCH_SERIAL] * bool(scratch)
        layers = {serial: snap_dir / f"{stem}.{serial}.qcow2" for serial in wanted}
        if not path.exists():
            tmp = path.with_suffix(".partial")
            machine = await self._boot(shape, f"template-{key[:12]}", self.config.boot_timeout, How(snapshot=False))
            try:
                if machine.image != rootfs:
                    raise VMError("another rootfs version was activated while the template booted; try again")
                await machine.qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(tmp))}")
                deadline = time.monotonic() + self.config.boot_timeout
                while True:
                    info = await machine.qmp.execute("query-migrate")
                    if info.get("status") == "completed":
                        break
                    if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                        raise VMError(f"saving the template failed: {info}")
                    await asyncio.sleep(0.02)
                # The migration flushed the disks and left the guest paused: its layers are what the state knows.
                for serial, layer in layers.items():
                    await asyncio.to_thread(shutil.copyfile, machine.dir / names[serial], layer)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                await machine.stop()
            tmp.rename(path)
            for old in snap_dir.glob(f"{shape.vcpus}x{shape.memory_mib}-*"):  # this shape's stale templates
                if not old.name.startswith(stem):
                    old.unlink(missing_ok=True)
        snapshot = Snapshot(path=path, shape=shape, key=key, rootfs=rootfs, layers=layers)
        self.snapshots[(shape.vcpus, shape.memory_mib)] = snapshot
        return snapshot

    # -- crash recovery ------------------------------------------------------------------------------------------

    async def cleanup_leftovers(self) -> list[str]:
        """Kill the QEMU processes a crashed agent left (by their recorded pid) and remove their directories."""
        removed = []
        for vm_dir in sorted(self.base_dir.glob(f"{PREFIX}*")):
            pid_file = vm_dir / "pid"
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                cmdline = _cmdline(pid)
                if b"qemu" in cmdline and str(vm_dir).encode() in cmdline:
                    os.killpg(pid, signal.SIGKILL)
                    for _ in range(100):
                        if not _alive(pid):
                            break
                        await asyncio.sleep(0.02)
            shutil.rmtree(vm_dir, ignore_errors=True)
            removed.append(vm_dir.name)
        for group in self.cgroups.find(self.cgroup_prefix) if self.cgroups is not None else []:
            await asyncio.to_thread(group.remove)
        for stale in (self.base_dir / "snapshots").glob("*.state"):  # an older agent's naming: unkeyed by shape
            if not re.fullmatch(r"\d+x\d+-[0-9a-f]{16}\.state", stale.name):
                stale.unlink(missing_ok=True)
                removed.append(stale.name)
        for partial in (self.base_dir / "snapshots").glob("*.partial"):
            partial.unlink(missing_ok=True)
            removed.append(partial.name)
        await asyncio.to_thread(self.sticky_store.clear_refs)  # no VM runs now: every checkout is stale
        for half in (self.base_dir / "disks").glob(".scratch-*"):  # a scratch template a crash cut short
            half.unlink(missing_ok=True)
            removed.append(half.name)
        return removed


def _name(version: Built | None) -> str | None:
    return version.name if version else None


def _prefix(netmask: str) -> int:
    return sum(bin(int(part)).count("1") for part in netmask.split("."))


def _exists(path: Path) -> bool:
    return path.exists()


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def qemu_version(qemu_bin: str) -> str:
    """The first line of ``qemu --version`` (e.g. "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)")."""
    try:
        proc = await asyncio.create_subprocess_exec(
            shutil.which(qemu_bin) or qemu_bin,
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=minimal_env(),
        )
        out, _ = await proc.communicate()
    except OSError as exc:
        raise VMError(f"cannot run {qemu_bin} --version: {exc}") from exc
    return out.decode(errors="replace").strip().split("\n", 1)[0]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host CPU's model name and its flags' digest: a template saved on one CPU may not restore on another."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return "unknown"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:12]
    return f"{fields.get('model name', 'unknown')}/{flags}"


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC rate in kHz, which a TCG guest's TSC runs at (QEMU reads the host's), or None.

    Told nothing, the guest kernel times its TSC against the PIT and HPET; microvm has neither, and on a busy
    host the fallback calibration fails ("Marking TSC unstable"), the clock stops at 0.000000 and boot hangs
    before the first console line (seen here at load 6-8 on 2 cores). Given ``tsc_early_khz`` it skips all that.
    Only hosts that say their TSC is constant (``constant_tsc``) and know its rate (``tsc_known_freq``) qualify:
    there "cpu MHz" is that rate, not a momentary clock speed."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    first = text.split("\n\n", 1)[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = fields.get("flags", "").split()
    mhz = fields.get("cpu MHz", "")
    if "constant_tsc" not in flags or "tsc_known_freq" not in flags:
        return None
    try:
        return round(float(mhz) * 1000) or None
    except ValueError:
        return None


def kernel_config(kernel: Path) -> str:
    """The kernel's build config, ``config`` beside it (`smith image kernel` and `smith image build` put it
    there), or "" when there is none."""
    try:
        return (Path(kernel).parent / "config").read_text()
    except OSError:
        return ""


def machine_for(kernel: Path) -> str:
    """microvm, with acpi=off when the kernel's build config says it has no ACPI."""
    config = kernel_config(kernel)
    return f"{MACHINE},acpi=off" if config and "\nCONFIG_ACPI=y" not in config else MACHINE


def tsc_args(khz: int | None) -> str:
    """Kernel arguments for a TCG guest's clock on a host with a constant, known TSC rate (under TCG the guest's
    TSC is the host's). ``tsc_early_khz``: see host_tsc_khz. ``tsc=reliable``: no clocksource watchdog; without
    it a loaded host's guest compares its TSC with jiffies (timer ticks that come late under emulation), calls
    the TSC unstable and falls back to jiffies, whose clock then runs slow (guest printk times stop matching the
    host's). Boot and restore times with and without it were within noise at load 7-8 here."""
    return f" tsc_early_khz={khz} tsc=reliable" if khz else ""


class _NoSignOfLife(VMError):
    pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return False
    return "zombie" not in state.lower()


def _tail(vm_dir: Path, limit: int = 800) -> str:
    """The last words of a VM: qemu's stderr and the console, for error messages."""
    parts = []
    for name in ("qemu.err", "console.log"):
        with contextlib.suppress(OSError):
            text = (vm_dir / name).read_text(errors="replace").strip()
            if text:
                parts.append(f"{name}: ...{text[-limit:]}")
    return " | ".join(parts) or "no output"


def _is_cpio(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(6) in (b"070701", b"070702")
    except OSError:
        return False
