"""The sandbox backend: each job in a bubblewrap (``bwrap``) sandbox. About 10 ms to start.

This is namespace isolation on a shared kernel: **weaker than a VM**. Use it where no VM can run.

Isolation: fresh user, mount, pid, net, ipc, uts and cgroup namespaces; the host's system dirs read-only; a
private writable work dir and /tmp; no network but loopback (unless ``network="host"``); all capabilities
dropped; ``--die-with-parent`` and its own session; an environment built from nothing (bwrap is started with
a minimal one and ``--clearenv``: the agent's credentials are in neither the job's nor its pid 1's environ).
The root is built from read-only binds of /usr, /etc, /opt (and the /bin, /lib... links): the agent's data
directory, /root, /home and /var are not there at all. As root, the sandboxes' directories must be reachable by
the job's uid, so they live under /var/tmp/smith-sandboxes/ when the agent's own directory is not (e.g. /root).

Limits. With the agent as root (the production case) they hold per job: a cgroup of its own
(``adapters/cgroups.py``: memory = the class's, /tmp's tmpfs pages included; processes; CPU = its vCPUs), a uid
of its own (``uid_base + slot``, so per-uid limits never cross jobs), /work a loop-mounted ext4 of the class's
``disk_mib`` (``adapters/workdisk.py``: ENOSPC past it), /tmp a tmpfs of half its memory. Always, per process:
RLIMIT_AS = the class's memory and RLIMIT_NPROC. Not root, or no writable cgroup: only the per-process limits
(said once in the log at start-up).

A sandbox is started before its job exists: the guest agent inside waits on stdin for its config, so a warm
pool of sandboxes works like one of VMs. Guest events come back on the sandbox's stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
from pydantic import ValidationError

from smith.adapters import workdisk
from smith.adapters.cgroups import Cgroups, JobCgroup, Limits
from smith.adapters.childenv import SAFE_PATH, minimal_env
from smith.adapters.launchers import Layout, bwrap_argv, unshare_argv
from smith.domain.vms import Backend, VMShape
from smith.errors import VMError
from smith.guest.agent import add_hosts_entry
from smith.logging import get_logger
from smith.wire.guest import GuestConfig, GuestEvent

log = get_logger("smith.sandbox")

GUEST_AGENT = Path(__file__).resolve().parent.parent / "guest" / "agent.py"
PREFIX = "sbx-"

READY = b'"smith": "ready"'
NOBODY = 65534
RUNNER_MOUNT = "/runner"


def guest_python() -> str:
    """A plain interpreter for the guest agent (stdlib only): the system's, else this one's base (not a venv)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return str(getattr(sys, "_base_executable", None) or sys.executable)


class SandboxMachine:
    def __init__(
        self,
        vm_id: str,
        root: Path,
        proc: asyncio.subprocess.Process,
        runner_dir: str | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.id = vm_id
        self.runner_dir = runner_dir
        self.root = root
        self.proc = proc
        self.release = release  # what stop() undoes besides the process: cgroup, work disk, uid, directory
        self._assigned = False
        self._stopped = False

    async def assign(self, config: GuestConfig) -> None:
        if self._assigned:
            raise VMError(f"sandbox {self.id} already has a job")
        self._assigned = True
        assert self.proc.stdin is not None
        if self.runner_dir:
            config = config.model_copy(update={"runner_dir": self.runner_dir})
        hosts = self.root / "guest" / "hosts"
        if config.cache is not None and config.cache.download_host and hosts.exists():
            # The guest agent is no root here: the host writes the line into the file bound over /etc/hosts.
            await asyncio.to_thread(add_hosts_entry, config.model_dump(), str(hosts))
        try:
            self.proc.stdin.write(config.model_dump_json().encode() + b"\n")
            await self.proc.stdin.drain()
            if not config.steps:  # steps mode: commands follow on stdin (send)
                self.proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise VMError(f"sandbox {self.id} died before it got its job") from exc

    async def send(self, message: dict[str, object]) -> None:
        """One steps-mode command to the guest agent."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(orjson.dumps(message) + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise VMError(f"sandbox {self.id} is gone") from exc

    async def events(self) -> AsyncIterator[GuestEvent]:
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line past the stream limit: the guest agent cuts lines, so this is noise
                continue
            if not raw:
                return
            try:
                yield GuestEvent.model_validate(orjson.loads(raw))
            except (orjson.JSONDecodeError, ValidationError):
                yield GuestEvent(
                    type="line",
                    ts=asyncio.get_running_loop().time(),
                    stream="system",
                    line=raw.decode("utf-8", "replace").rstrip("\n"),
                )

    def host_logs(self) -> dict[str, Path]:
        return {}

    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.release is not None:
            await asyncio.to_thread(self.release)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


class SandboxVMM:
    backend = Backend.SANDBOX
    isolation = "namespace sandbox: weaker than a VM"

    def __init__(
        self,
        base_dir: Path,
        *,
        network: str = "none",
        bwrap: str = "bwrap",
        launcher: str = "bwrap",
        max_procs: int = 4096,
        runner_dir: Path | None = None,
        root_dir: Path | None = None,
        cgroup_parent: str | None = None,
        uid_base: int = 100_000,
    ) -> None:
        if network not in ("none", "host"):
            raise VMError("sandbox network must be 'none' or 'host'")
        self.base_dir = _reachable_dir(Path(base_dir))
        self.as_root = os.geteuid() == 0
        # Job cgroups are named after this agent's directory: another agent's (or test's) on the host are not ours.
        self.cgroup_prefix = f"smith-{hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:8]}-"
        self.cgroups = Cgroups.detect(cgroup_parent) if self.as_root else None
        self.uid_base = uid_base
        self._uids: set[int] = set()  # slots in use: the job of slot n runs as uid_base + n
        if self.cgroups is None or not self.as_root:
            log.warning(
                "sandbox limits are per process only (RLIMIT_AS, RLIMIT_NPROC of a shared uid), /work is unsized: "
                "run the agent as root with a writable cgroup hierarchy for per-job memory, process, CPU and "
                "disk limits",
                root=self.as_root,
                cgroups=self.cgroups is not None,
            )
        self.network = network
        if launcher not in ("bwrap", "unshare"):
            raise VMError("sandbox launcher must be 'bwrap' or 'unshare'")
        self.launcher = launcher  # bubblewrap, or util-linux's unshare where bwrap is missing: the same sandbox
        self.bwrap = shutil.which(bwrap) or bwrap
        self.unshare = os.path.realpath(shutil.which("unshare") or "/usr/bin/unshare")  # the job may not reach a link
        self.max_procs = max_procs
        self.runner_dir = runner_dir  # a host's GitHub runner install, shown read-only at /runner
        self.root_dir = root_dir  # an image directory to use as / (read-only) instead of the host's system dirs
        if root_dir is not None and not (Path(root_dir) / "bin" / "sh").exists():
            raise VMError(f"sandbox root {root_dir} has no /bin/sh: not a root filesystem")
        if root_dir is not None and launcher == "unshare" and not (Path(root_dir) / "usr/bin/setpriv").exists():
            raise VMError(f"sandbox root {root_dir} has no /usr/bin/setpriv: the unshare launcher needs it")
        self.ready_timeout = 30.0
        log.warning("sandbox backend: jobs share the host kernel; isolation is weaker than a VM")

    def layout(self, root: Path, vm_id: str, tmp_bytes: int | None = None) -> Layout:
        """What the sandbox holds, whichever launcher builds it: a fresh root from read-only host system dirs (or
        an image's), nothing of the agent's own state."""
        mounts: list[tuple[str, str, str]] = []
        if self.root_dir is not None:  # each top-level entry of the image, read-only, over a tmpfs root
            skip = {"dev", "proc", "tmp", "run", "work", "smith-guest"}
            for entry in sorted(Path(self.root_dir).iterdir()):
                if entry.name in skip:
                    continue
                if entry.is_symlink():
                    mounts.append(("symlink", os.readlink(entry), f"/{entry.name}"))
                else:
                    mounts.append(("ro", str(entry), f"/{entry.name}"))
        else:
            for top in ("usr", "etc", "opt"):
                if Path(f"/{top}").is_dir():
                    mounts.append(("ro", f"/{top}", f"/{top}"))
            for top in ("bin", "lib", "lib64", "sbin"):
                path = Path(f"/{top}")
                if path.is_symlink():
                    mounts.append(("symlink", os.readlink(path), f"/{top}"))
                elif path.is_dir():
                    mounts.append(("ro", f"/{top}", f"/{top}"))
        if (root / "guest" / "hosts").exists():  # the job's /etc/hosts: the system's, plus the cache's download host
            mounts.append(("file", str(root / "guest" / "hosts"), "/etc/hosts"))
        if self.runner_dir is not None:
            mounts.append(("ro", str(self.runner_dir), RUNNER_MOUNT))
        python = guest_python() if self.root_dir is None else "/usr/bin/python3"
        prefix = Path(python).resolve().parent.parent
        if self.root_dir is None and not str(prefix).startswith("/usr"):
            mounts.append(("ro", str(prefix), str(prefix)))
        mounts += [("rw", str(root / "work"), "/work"), ("ro", str(root / "guest"), "/smith-guest")]
        return Layout(
            mounts=mounts,
            hostname=f"smith-{vm_id[:40]}",
            tmp_bytes=tmp_bytes,
            network=self.network == "host",
            env={"HOME": "/work", "TMPDIR": "/tmp", "PATH": SAFE_PATH},
            argv=[python, "-I", "-S", "/smith-guest/agent.py", "--workdir", "/work", "--announce"],
            new_root=str(root / "newroot"),
        )

    def command(self, root: Path, vm_id: str, tmp_bytes: int | None = None) -> list[str]:
        plan = self.layout(root, vm_id, tmp_bytes)
        if self.launcher == "unshare":
            return unshare_argv(plan, self.unshare)
        return bwrap_argv(plan, self.bwrap)

    async def boot(self, shape: VMShape, vm_id: str) -> SandboxMachine:
        root = self.base_dir / f"{PREFIX}{vm_id}"
        undo: list[Callable[[], None]] = []

        def release() -> None:
            errors = []
            for step in reversed(undo):
                try:
                    step()
                except (OSError, VMError) as exc:
                    errors.append(exc)
            undo.clear()
            if errors:
                log.warning("sandbox cleanup incomplete", vm_id=vm_id, errors=[str(e) for e in errors])

        try:
            (root / "work").mkdir(parents=True)
            undo.append(lambda: shutil.rmtree(root, ignore_errors=True))
            root.chmod(0o711)
            (root / "guest").mkdir(mode=0o755)
            (root / "newroot").mkdir(mode=0o755)  # where the unshare launcher mounts the sandbox's root
            shutil.copy2(GUEST_AGENT, root / "guest" / "agent.py")
            (root / "guest" / "agent.py").chmod(0o644)
            hosts = Path(self.root_dir or "/") / "etc" / "hosts"
            if hosts.is_file():  # written in place at assign (bound over the sandbox's /etc/hosts, read-only inside)
                shutil.copyfile(hosts, root / "guest" / "hosts")
                (root / "guest" / "hosts").chmod(0o644)
            mem = shape.memory_mib * 1024 * 1024
            procs = self.max_procs
            uid = self._take_uid() if self.as_root else None
            if uid is not None:  # the job runs as a uid of its own, never as the agent's root nor another job's
                undo.append(lambda: self._uids.discard(uid - self.uid_base))
                undo.append(lambda: workdisk.unmount(root / "work"))
                try:
                    await asyncio.to_thread(workdisk.mount, root, root / "work", shape.disk_mib, uid)
                except VMError as exc:  # e.g. no free loop device (a container with a fixed few): still a sandbox
                    log.warning("sandbox /work is unsized for this job", vm_id=vm_id, error=exc.message)
                    os.chown(root / "work", uid, uid)
            group: JobCgroup | None = None
            if self.cgroups is not None:
                group = self.cgroups.create(self.cgroup_prefix + vm_id, Limits(mem, procs, shape.vcpus))
                undo.append(group.remove)

            def limits() -> None:  # runs in the child before exec
                if group is not None:
                    group.enter()
                resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
                resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)

            proc = await asyncio.create_subprocess_exec(
                *self.command(root, vm_id, tmp_bytes=mem // 2),  # /tmp is memory: at most half the job's
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=limits,
                limit=1 << 20,
                env=minimal_env(),  # bwrap is the sandbox's pid 1: its environ is readable inside
            )
            (root / "pid").write_text(str(proc.pid))
            undo.append(lambda: _kill(proc))
            await self._wait_ready(proc, vm_id)
        except BaseException as exc:
            await asyncio.to_thread(release)
            if isinstance(exc, OSError):
                raise VMError(f"cannot start sandbox {vm_id}: {exc}") from exc
            raise
        return SandboxMachine(vm_id, root, proc, RUNNER_MOUNT if self.runner_dir else None, release)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, vm_id: str) -> None:
        """The guest agent says it is ready once it waits for its job; a sandbox that never gets there (bwrap
        refused by AppArmor, no user namespaces) fails here, with what the launcher said, not at its job."""
        assert proc.stdout is not None
        said: list[bytes] = []
        try:
            async with asyncio.timeout(self.ready_timeout):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        break
                    if READY in line:
                        return
                    said.append(line)
        except TimeoutError:
            raise VMError(f"sandbox {vm_id} not ready within {self.ready_timeout:.0f}s", retryable=True) from None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        text = b"".join(said).decode("utf-8", "replace").strip()[-800:] or "no output"
        raise VMError(f"sandbox {vm_id} did not start ({self.launcher} exited {proc.returncode}): {text}{hint(text)}")

    async def probe(self) -> None:
        """Start a real sandbox and stop it: VMError with the launcher's own words if this host refuses it."""
        machine = await self.boot(VMShape("probe", 1, 256, 64), f"probe-{os.getpid()}")
        await machine.stop()

    def _take_uid(self) -> int:
        slot = next(n for n in range(len(self._uids) + 1) if n not in self._uids)
        self._uids.add(slot)
        return self.uid_base + slot

    async def cleanup_leftovers(self) -> list[str]:
        """Kill sandboxes a crashed agent left running; remove their cgroups, work disks and directories."""
        removed = []
        for root in sorted(self.base_dir.glob(f"{PREFIX}*")):
            pid_file = root / "pid"
            if pid_file.exists():
                with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                    pid = int(pid_file.read_text())
                    if _is_bwrap(pid):
                        os.killpg(pid, signal.SIGKILL)
            removed.append(root.name)
        if self.cgroups is not None:
            for group in self.cgroups.find(self.cgroup_prefix):
                await asyncio.to_thread(group.remove)
        for point in workdisk.mounts_under(self.base_dir):
            await asyncio.to_thread(workdisk.unmount, point)
        for root in sorted(self.base_dir.glob(f"{PREFIX}*")):
            shutil.rmtree(root, ignore_errors=True)
        return removed


def _reachable_dir(wanted: Path) -> Path:
    """``wanted``, or a stand-in under /var/tmp when running as root and nobody could not reach ``wanted``."""
    wanted.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return wanted
    path = wanted.resolve()
    if not all(p.stat().st_mode & 0o001 for p in path.parents):
        path = Path("/var/tmp/smith-sandboxes") / hashlib.sha256(str(path).encode()).hexdigest()[:12]
        path.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o711)
    path.chmod(0o711)
    return path


def hint(said: str) -> str:
    """What to do about a launcher's refusal to make namespaces (Ubuntu 23.10+ restricts them with AppArmor)."""
    words = ("uid map", "No permissions to create new namespace", "Operation not permitted", "Permission denied")
    if any(w in said for w in words):
        return (
            "; unprivileged user namespaces are refused here: on Ubuntu 23.10+ install Smith's AppArmor profile "
            "for bwrap (`smith agent doctor` names it; docs/hosts.md), elsewhere set kernel.unprivileged_userns_clone=1"
        )
    return ""


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _is_bwrap(pid: int) -> bool:
    """Is ``pid`` still one of our launchers (bwrap or unshare), not a reused pid?"""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith((b"bwrap", b"unshare"))
    except OSError:
        return False
