"""A cgroup per job: memory (tmpfs pages included: they are charged to the cgroup that writes them), process
count and CPU limits that hold for the whole job, however many processes it starts.

Two layouts:

- cgroup v2 (the unified hierarchy, what systemd hosts have): job cgroups (a sandbox's, a QEMU's; Firecracker's
  jailer makes its own under ``delegated()``) are made under a delegated parent,
  ``SMITH_AGENT_CGROUP_PARENT`` (e.g. the agent's own unit with ``Delegate=yes``), else the agent's own cgroup.
  A v2 cgroup with processes cannot hand controllers to children, so when the parent holds processes (the
  agent itself) they are moved into ``<parent>/agent`` first; ``+memory +pids +cpu`` is then enabled in the
  parent's ``cgroup.subtree_control``. Limits: ``memory.max``, ``memory.swap.max=0``, ``pids.max``, ``cpu.max``.
- cgroup v1 (separate hierarchies, as on this development machine and older hosts): a child of the agent's own
  cgroup in each of the memory, pids and cpu hierarchies. Limits: ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes`` where swap accounting is on), ``pids.max``, ``cpu.cfs_quota_us``.

A process is placed into the job's cgroups from the child before it execs (``JobCgroup.enter``), so nothing of
the job ever runs outside them. ``remove()`` kills whatever is left in them and removes them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from smith.errors import VMError
from smith.logging import get_logger

log = get_logger("smith.cgroups")

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
LEAF = "agent"  # v2: the leaf the agent moves itself into, so its cgroup can hand controllers to the VMs' cgroups
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    vcpus: float


@dataclass(frozen=True)
class JobCgroup:
    """One job's cgroup: one directory (v2) or one per controller hierarchy (v1)."""

    name: str
    dirs: tuple[Path, ...]

    def enter(self) -> None:
        """Move the calling process into this cgroup (from a child before exec: it must stay small and safe)."""
        pid = str(os.getpid()).encode()
        for d in self.dirs:
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return found

    def exists(self) -> bool:
        return any(d.exists() for d in self.dirs)

    def remove(self, timeout: float = 10.0) -> None:
        """Kill every process left in the cgroup, then remove it (a cgroup with processes cannot be removed)."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")  # v2 (5.14+): the whole cgroup at once
        while True:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            left = []
            for d in self.dirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
            if not left:
                return
            if time.monotonic() > deadline:
                raise VMError(f"cgroup {self.name} still busy after {timeout:.0f}s: {left}")
            time.sleep(0.02)


class Cgroups:
    """Makes and finds job cgroups under ``parents`` (one dir for v2, one per controller for v1)."""

    def __init__(self, version: int, parents: tuple[Path, ...]) -> None:
        self.version = version
        self.parents = parents
        self.root = ROOT

    def delegated(self) -> str:
        """v2: the parent cgroup relative to the hierarchy's root (e.g. ``system.slice/smith-agent.service``),
        what Firecracker's jailer takes as ``--parent-cgroup``; "" on v1."""
        if self.version != 2:
            return ""
        return str(self.parents[0].relative_to(self.root))

    @classmethod
    def detect(cls, parent: str | None = None, root: Path = ROOT) -> Cgroups | None:
        """The cgroups this process may use, or None (not root, no writable hierarchy: per-process limits only)."""
        own = _own_cgroups()
        try:
            if (root / "cgroup.controllers").exists():  # pure v2
                here = own.get("", "/")
                if parent is None and here.endswith(f"/{LEAF}"):  # detected before: the agent is in its leaf
                    here = here[: -len(LEAF) - 1] or "/"
                base = root / (parent or here).lstrip("/")
                found = cls._v2(base, move=base != root)
                found.root = root
                return found
            if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
                dirs = tuple(root / c / (parent or own.get(c, "/")).lstrip("/") for c in V1_CONTROLLERS)
                probe = cls(1, dirs)
                probe._check_writable()
                return probe
        except OSError as exc:
            log.warning("cgroups not usable; job limits are per process only", error=str(exc))
            return None
        return None

    @classmethod
    def _v2(cls, base: Path, *, move: bool = True) -> Cgroups:
        """``move``: the processes in ``base`` go to a leaf (cgroup v2 has no processes beside child groups with
        controllers). Not in the root cgroup, which is exempt from that rule: there they would be every process
        of the host (or of the container) that is not in a group of its own."""
        base.mkdir(parents=True, exist_ok=True)
        held = (base / "cgroup.procs").read_text().split() if move else []
        if held:  # the agent lives here: move it (and anything else here) to a leaf of its own
            (base / LEAF).mkdir(exist_ok=True)
            for pid in held:
                with contextlib.suppress(ProcessLookupError, OSError):
                    (base / LEAF / "cgroup.procs").write_text(pid)
        wanted = set(V1_CONTROLLERS) & set((base / "cgroup.controllers").read_text().split())
        (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        found = cls(2, (base,))
        found._check_writable()
        return found

    def _check_writable(self) -> None:
        for d in self.parents:
            if not os.access(d, os.W_OK):
                raise PermissionError(f"{d} is not writable")

    def create(self, name: str, limits: Limits) -> JobCgroup:
        group = JobCgroup(name, tuple(p / name for p in self.parents))
        try:
            for d in group.dirs:
                d.mkdir()
            if self.version == 2:
                d = group.dirs[0]
                _write(d / "memory.max", limits.memory_bytes)
                _write(d / "memory.swap.max", 0, optional=True)
                _write(d / "pids.max", limits.pids)
                _write(d / "cpu.max", f"{int(limits.vcpus * CPU_PERIOD_US)} {CPU_PERIOD_US}", optional=True)
            else:
                memory, pids, cpu = group.dirs
                _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
                _write(memory / "memory.memsw.limit_in_bytes", limits.memory_bytes, optional=True)  # no swap
                _write(pids / "pids.max", limits.pids)
                _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
                _write(cpu / "cpu.cfs_quota_us", int(limits.vcpus * CPU_PERIOD_US))
        except OSError as exc:
            with contextlib.suppress(VMError):
                group.remove()
            raise VMError(f"cannot make cgroup {name}: {exc}") from exc
        return group

    def find(self, prefix: str) -> list[JobCgroup]:
        """Job cgroups named ``prefix*`` (a crashed agent's, for cleanup)."""
        names = sorted({d.name for p in self.parents if p.is_dir() for d in p.glob(f"{prefix}*") if d.is_dir()})
        return [JobCgroup(n, tuple(p / n for p in self.parents)) for n in names]


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        if not optional:
            raise


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup ("" is the v2 entry)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                found[c] = path
    return found
