"""The fake Firecracker's guest: what a real microVM booted from Smith's image would do, as far as Smith sees it.

* The serial console is Firecracker's stdout, which Firecracker makes non-blocking: bytes that do not fit in
  the pipe (nobody reading) are dropped, not queued (:class:`Console`).
* Boot: without an ``initrd_path`` the kernel mounts the root drive (Firecracker adds ``root=/dev/vda``); the
  Debian kernel of ``smith image build`` has virtio-blk and ext4 as modules, so it cannot mount it and panics
  (``panic=1``), and with ``reboot=k`` Firecracker exits: after InstanceStart answered 204. An ext4 root drive
  is taken as mountable; an initramfs (``initrd_path``) always boots.
* Disks: Firecracker attaches drives in the order they were PUT (the root device first) and the guest names
  them vda, vdb, ...; their serial is ``<st_dev><st_rdev><st_ino>`` of the host file, never a name of ours. The
  image's init finds disks by ``smith.vdX=<name>`` on the command line. With ``smith.root=<name>`` (a
  ``smith rootfs`` version) the initramfs switches to that disk: it must be an ext4 file system holding
  ``/smith/init``, else init says so on the console and reboots (the boot fails). After the switch the
  version's own init (``rootfs/init.sh``) decides how the guest shuts down. A ``smith-scratch`` disk that is an
  ext4 file system is mounted at /work (the kernel's ``EXT4-fs (vdX): mounted filesystem`` line).
* Network: the kernel has no IP autoconfiguration; the image's init reads ``smith.ip=``/``smith.gw=``/
  ``smith.dns=`` and adds the route to MMDS through eth0. Without ``smith.ip`` the guest has no address and
  no route, never reaches MMDS, and waits for its job forever.
* Identity: the guest's MAC (``guest_mac``) and address (``smith.ip=``) are fixed at boot; a VM restored from a
  snapshot keeps its template's until the image's guest agent (``--set-net``) takes the ones the config's
  envelope names. The guest prints ``eth0: <mac> <address>`` on the console whenever they are set.
* Vsock: with a vsock device configured (and ``vsock``: the kernel has it) the guest agent's connection to the
  host's port reaches the Unix socket ``<uds_path>_<port>`` on the host, as Firecracker forwards it (a stream
  both ways: workflow steps come back on it); nobody listening there fails the connection, and the agent falls
  back to the console.
* Shutdown: when the guest agent is done, init runs its last command (read from the image's ``init.sh``). On
  x86 ``poweroff -f`` halts the vCPUs and Firecracker keeps running; ``reboot -f`` with ``reboot=k`` exits it.
  Ctrl+Alt+Del makes the kernel signal PID 1 (SIGINT), which a shell init ignores unless it traps it; a
  halted guest ignores it altogether. Whatever ran in the guest ends with the VM: processes a job started in
  sessions of their own (every step does) are killed too when the fake exits (it is their child subreaper).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GUEST_AGENT = Path(__file__).resolve().parent.parent / "guest" / "agent.py"
INIT_SH = Path(__file__).resolve().parent.parent / "images" / "init.sh"
ROOTFS_INIT_SH = Path(__file__).resolve().parent.parent / "rootfs" / "init.sh"
EXT4_MAGIC_OFFSET = 1080  # the superblock starts at 1024; s_magic is 56 bytes in
EXT4_MAGIC = b"\x53\xef"


class Console:
    """Firecracker's stdout: non-blocking; what does not fit in the pipe is lost (counted in ``dropped``)."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.dropped = 0
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def write(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                self.dropped += len(data)
                return
            except OSError:
                return
            data = data[n:]

    def line(self, text: str) -> None:
        self.write(text.encode() + b"\r\n")


def init_shutdown(init: Path = INIT_SH) -> tuple[str, bool]:
    """An init script's final shutdown command (``reboot`` or ``poweroff``) and whether it traps SIGINT."""
    text = init.read_text()
    commands = re.findall(r"^\s*(?:\$bb\s+)?(reboot|poweroff|halt)\b", text, re.MULTILINE)
    traps = bool(re.search(r"^\s*trap\s.*\bINT\b", text, re.MULTILINE))
    return (commands[-1] if commands else "poweroff"), traps


def root_failure_command() -> str:
    """What the initramfs does when it cannot switch to the root disk (the command after its message)."""
    m = re.search(r"not a smith rootfs.*\n\s*(reboot|poweroff|halt)\b", INIT_SH.read_text())
    return m.group(1) if m else "poweroff"


def root_mountable(path: Path) -> bool:
    """Whether the kernel could mount this root drive: an ext4 file system (its superblock magic)."""
    try:
        with path.open("rb") as f:
            f.seek(EXT4_MAGIC_OFFSET)
            return f.read(2) == EXT4_MAGIC
    except OSError:
        return False


class Guest:
    """Plays the VM on ``api`` (a FakeFirecracker); sets ``done`` when Firecracker would exit."""

    def __init__(
        self,
        api: Any,
        done: asyncio.Event,
        console: Console | None = None,
        vsock: bool = True,
        *,
        whole_process: bool = False,
    ) -> None:
        self.api = api
        # The fake's own process (the Firecracker stand-in) is the VM: everything below it ends with the guest.
        # Played inside another process (a test), only the guest's own process group goes.
        self.whole_process = whole_process
        self.vsock = vsock  # the guest kernel has vsock
        self.done = done
        self.console = console or Console()
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-guest-"))
        self.booted = False  # init runs
        self.networked = False  # eth0 has an address and a route to MMDS
        self.halted = False
        self.identity = ("", "")  # eth0's MAC and address/prefix
        self.init = INIT_SH  # the init that runs (a rootfs version's own after the switch)
        api.on_change = self.changed
        if whole_process:
            with contextlib.suppress(OSError, AttributeError):  # the guest's orphans become ours: see cleanup()
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)

    @property
    def boot_args(self) -> str:
        return str((self.api.config.get("boot-source") or {}).get("boot_args") or "")

    def changed(self, event: str) -> None:
        if event == "start":
            self._boot()
        if event == "running" and not self.booted:  # restored from a snapshot: as it was when saved
            self.booted = self.networked = True
            self._identify(*self._boot_identity())
        if event == "paused" and self.proc is not None:
            _signal_group(self.proc, signal.SIGSTOP)
        if event == "running" and self.proc is not None:
            _signal_group(self.proc, signal.SIGCONT)
        if event == "ctrl-alt-del":
            self._ctrl_alt_del()
            return
        config = ((self.api.mmds or {}).get("smith") or {}).get("config")
        if self.api.state == "Running" and self.networked and config and self.task is None and not self.halted:
            net = config.get("net") if isinstance(config, dict) else None
            if isinstance(net, dict) and "--set-net" in self.init.read_text():
                self._identify(str(net.get("mac", "")), str(net.get("ip", "")))
            self.task = asyncio.ensure_future(self._run(config))

    def _boot_identity(self) -> tuple[str, str]:
        mac = str((self.api.ifaces.get("eth0") or {}).get("guest_mac", ""))
        ip = next((w.split("=", 1)[1] for w in self.boot_args.split() if w.startswith("smith.ip=")), "")
        return mac, ip

    def _identify(self, mac: str, ip: str) -> None:
        self.identity = (mac, ip)
        self.console.line(f"eth0: {mac} {ip}")

    def _boot(self) -> None:
        c = self.console
        c.line("[    0.000000] Linux version 6.1.0 (fake firecracker guest)")
        c.line(f"[    0.000000] Command line: {self.boot_args}")
        boot = self.api.config.get("boot-source") or {}
        if not boot.get("initrd_path"):
            root = next((d for d in self.api.drives.values() if d.get("is_root_device")), None)
            if root is None or not root_mountable(self.api._host(root["path_on_host"])):
                c.line('[    0.500000] VFS: Cannot open root device "vda" or unknown-block(0,0): error -6')
                c.line("[    0.500000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)")
                self._reboot()
                return
        elif not self._disks():
            return
        self.booted = True
        c.line("[    0.412000] Run /sbin/init as init process")
        self.networked = "smith.ip=" in self.boot_args
        if self.networked:
            self._identify(*self._boot_identity())
        c.write(json.dumps({"smith": "ready", "ts": time.time()}).encode() + b"\n")

    def devices(self) -> dict[str, dict[str, Any]]:
        """The drives by the guest's device name: Firecracker's order (root device first, then as PUT)."""
        drives = sorted(self.api.drives.values(), key=lambda d: not d.get("is_root_device"))
        return {_device(i): d for i, d in enumerate(drives)}

    def _named(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """The device the command line names ``name`` (``smith.vdX=<name>``) and its drive."""
        devices = self.devices()
        for word in self.boot_args.split():
            key, _, value = word.partition("=")
            if value == name and key.startswith("smith.vd") and key[6:] in devices:
                return key[6:], devices[key[6:]]
        return None

    def _disks(self) -> bool:
        """The initramfs: switch to the root disk the command line names, mount the scratch disk. False: the
        root disk is missing or no smith rootfs, and the guest went down."""
        args = dict(w.split("=", 1) for w in self.boot_args.split() if "=" in w)
        root = args.get("smith.root")
        if root is not None:
            found = self._named(root)
            image = self.api._host(found[1]["path_on_host"]) if found else None
            if found is None or image is None or not root_mountable(image) or _read_ext4(image, "/smith/init") is None:
                self.console.line(f"<3>smith: root disk {root} not found or not a smith rootfs")
                if root_failure_command() == "reboot":
                    self._reboot()
                else:
                    self.console.line("reboot: Power down")
                    self.halted = True
                return False
            self.console.line(f"[    0.450000] EXT4-fs ({found[0]}): mounted filesystem r/w; switching root")
            self.init = ROOTFS_INIT_SH
        mounts = {"smith-scratch": "/work"} | {
            k.removeprefix("smith.mount."): v for k, v in args.items() if k.startswith("smith.mount.")
        }
        for name, path in mounts.items():  # the rootfs's init mounts sticky disks (smith.mount.<name>=<path>)
            disk = self._named(name)
            if disk is not None and root_mountable(self.api._host(disk[1]["path_on_host"])):
                self.console.line(f"[    0.460000] EXT4-fs ({disk[0]}): mounted filesystem r/w on {path}")
        return True

    def _reboot(self) -> None:
        """The guest restarts: with reboot=k Firecracker exits; without, the x86 reboot never reaches it."""
        self.console.line("reboot: Restarting system")
        if "reboot=k" in self.boot_args.split():
            self.done.set()
        else:
            self.halted = True

    def _shutdown(self) -> None:
        command, _ = init_shutdown(self.init)
        if command == "reboot":
            self._reboot()
        else:  # poweroff/halt on x86: the vCPUs stop, Firecracker keeps running
            self.console.line("reboot: Power down")
            self.halted = True

    def _ctrl_alt_del(self) -> None:
        if self.halted or not self.booted:
            return  # nothing runs in the guest to act on it
        _, traps = init_shutdown(self.init)
        if not traps:
            return  # PID 1 without a handler ignores SIGINT
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGCONT)
            _signal_group(self.proc, signal.SIGTERM)
        else:
            self._shutdown()

    def _events_args(self) -> list[str]:
        """Where the guest agent's vsock connection to the host would land: ``<uds_path>_<port>``."""
        device = self.api.config.get("vsock")
        if not device or not self.vsock:
            return []
        port = re.search(r"^EVENTS_PORT = (\d+)", GUEST_AGENT.read_text(), re.MULTILINE)
        assert port is not None
        return ["--events-socket", f"{self.api._host(device['uds_path'])}_{port.group(1)}"]

    async def _run(self, config: dict[str, Any]) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            str(GUEST_AGENT),
            "--workdir",
            str(self.workdir),
            *self._events_args(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # a SIGKILLed "VMM" takes its guest with it, as a real VM would go
        )
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        while chunk := await proc.stdout.read(4096):  # the serial port: the guest writes, Firecracker forwards
            self.console.write(chunk)
        await proc.wait()
        self._shutdown()

    def cleanup(self) -> None:
        """Everything the guest ran goes with the VM, as it would: the agent and whatever outlived it."""
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGKILL)
        if not self.whole_process:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


PR_SET_CHILD_SUBREAPER = 36


def _descendants(root: int) -> list[int]:
    """The processes below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _device(index: int) -> str:
    name, index = "", index + 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = "abcdefghijklmnopqrstuvwxyz"[rest] + name
    return "vd" + name


def _read_ext4(image: Path, path: str) -> str | None:
    """A file inside an ext4 image (debugfs: no mount), or None."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=False, timeout=60)
    if done.returncode or b"File not found" in done.stderr:
        return None
    return done.stdout.decode(errors="replace")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _signal_group(proc: Any, sig: int) -> None:
    if isinstance(proc, asyncio.subprocess.Process) and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
