"""Firecracker's jailer: its command line and the chroot it runs Firecracker in.

The jailer (same version as Firecracker) chroots to ``<chroot_base>/<exec_file_name>/<id>/root``, joins a
network namespace (``--netns``), puts the process in its own cgroup (v2: ``<parent_cgroup>/<id>`` with the
``--cgroup`` values written), drops to ``--uid``/``--gid`` and execs Firecracker with the arguments after
``--``. Firecracker then sees only the chroot, so every path it is given (kernel, drives, sockets, log) is
relative to that root: :meth:`Jail.inside` gives that path, :meth:`Jail.host` the same file seen from the host.

Decisions:

* no ``--daemonize``: Firecracker's stdout is the guest's serial console, which the agent reads for the job's
  events; the agent puts the process in its own session instead (``start_new_session``), so killing the
  process group kills the VM;
* no ``--new-pid-ns``: with it the jailer forks and the PID the agent holds is not Firecracker's; without it
  the jailer execs Firecracker in place, so ``process.pid`` is the VMM;
* shared read-only images (kernel, rootfs) are hard-linked into the chroot (copied when on another
  filesystem, then root's and read-only) and **not** chowned: a hard link shares the inode, so chowning it
  would chown the pool's image. They must be world-readable and not writable by the jail user; per-VM files
  (scratch disk, log, metrics) are created in the chroot and owned by the jail's uid/gid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from smith.errors import ConfigError, InvalidInput, VMError

ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
API_SOCKET = "/run/firecracker.socket"  # Firecracker's default --api-sock, inside the chroot
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where cgroup2 usually is; the jailer uses the first cgroup2 mount


def cgroup2_root(mounts: Path = Path("/proc/mounts")) -> Path:
    """The first cgroup2 mount, as the jailer finds it (a hybrid host has it at /sys/fs/cgroup/unified)."""
    with contextlib.suppress(OSError):
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1].replace("\\040", " "))
    return CGROUP_ROOT


def chroot_base_problem(base: Path) -> str:
    """Why the jailer could not work under ``base`` ("" if it can): it copies Firecracker into the chroot and
    execs it there (not on noexec) and makes /dev/kvm and /dev/net/tun nodes in it (not usable on nodev)."""
    probe = base
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        flags = os.statvfs(probe).f_flag
    except OSError as exc:
        return f"cannot check the chroot base {base}: {exc}"
    bad = [name for name, flag in (("noexec", os.ST_NOEXEC), ("nodev", os.ST_NODEV)) if flags & flag]
    if bad:
        return (
            f"the chroot base {base} is on a {'/'.join(bad)} mount: the jailer copies Firecracker there and execs "
            "it, with /dev/kvm and /dev/net/tun nodes beside it; use a directory on a filesystem mounted without "
            "noexec and nodev (e.g. under /var/lib or /srv)"
        )
    return ""


def check_id(vm_id: str) -> str:
    """The jailer accepts ids of letters, digits and hyphens, at most 64 characters."""
    if not ID_RE.match(vm_id):
        raise InvalidInput(f"VM id {vm_id!r} is not valid for the jailer: use 1-64 letters, digits and hyphens")
    return vm_id


def jail_name(prefix: str, vm_id: str, max_len: int = 64) -> str:
    """A jailer id for ``vm_id``: ``prefix + vm_id`` when valid and short enough, else sanitized, cut, hashed."""
    if not vm_id:
        raise InvalidInput("VM id is empty")
    max_len = min(max_len, 64)
    safe = re.sub(r"[^A-Za-z0-9-]", "-", vm_id)
    name = prefix + safe
    if safe != vm_id or len(name) > max_len:
        digest = hashlib.sha256(vm_id.encode()).hexdigest()[:8]
        name = f"{prefix}{safe[: max(0, max_len - len(prefix) - 9)]}-{digest}"
    return check_id(name)


@dataclass(frozen=True)
class JailSpec:
    id: str
    exec_file: Path
    jailer_bin: str
    chroot_base: Path
    uid: int
    gid: int
    netns: str = ""
    cgroup_version: int = 2
    parent_cgroup: str = ""
    cgroups: dict[str, str] = field(default_factory=dict)
    resource_limits: dict[str, int] = field(default_factory=dict)
    firecracker_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_id(self.id)
        if "firecracker" not in self.exec_file.name:
            raise ConfigError(f"jailer exec file {self.exec_file} must have 'firecracker' in its file name")
        if self.cgroup_version not in (1, 2):
            raise ConfigError("cgroup version must be 1 or 2")
        for key in self.cgroups:
            if not re.fullmatch(r"[a-z_]+\.[a-z_.]+", key):
                raise ConfigError(f"cgroup setting {key!r} is not a cgroup file name like cpu.max")


class Jail:
    """One VM's chroot: ``<chroot_base>/<exec_file_name>/<id>/root``."""

    def __init__(self, spec: JailSpec) -> None:
        self.spec = spec
        self.dir = spec.chroot_base / spec.exec_file.name / spec.id
        self.root = self.dir / "root"

    def command(self) -> list[str]:
        """The jailer's argv; ``firecracker_args`` go after ``--`` (paths in them are inside the chroot)."""
        s = self.spec
        argv = [
            s.jailer_bin,
            "--id",
            s.id,
            "--exec-file",
            str(s.exec_file),
            "--uid",
            str(s.uid),
            "--gid",
            str(s.gid),
            "--chroot-base-dir",
            str(s.chroot_base),
            "--cgroup-version",
            str(s.cgroup_version),
        ]
        if s.parent_cgroup:
            argv += ["--parent-cgroup", s.parent_cgroup]
        for key, value in s.cgroups.items():
            argv += ["--cgroup", f"{key}={value}"]
        for key, limit in s.resource_limits.items():
            argv += ["--resource-limit", f"{key}={limit}"]
        if s.netns:
            argv += ["--netns", s.netns]
        return [*argv, "--", *s.firecracker_args]

    def inside(self, name: str) -> str:
        """The path Firecracker (chrooted) uses for ``name``."""
        return "/" + name.lstrip("/")

    def host(self, inside: str) -> Path:
        """The host path of a file Firecracker knows as ``inside``."""
        return self.root / inside.lstrip("/")

    def create(self) -> None:
        """Make the chroot (fails if it exists: ids are unique, a leftover must be cleaned first)."""
        try:
            self.root.mkdir(parents=True, exist_ok=False)
        except FileExistsError as exc:
            raise VMError(f"chroot {self.root} already exists (a leftover? run cleanup)") from exc
        except OSError as exc:
            raise VMError(f"cannot create chroot {self.root}: {exc}") from exc
        self.root.chmod(0o750)
        self._chown(self.root)
        (self.root / "run").mkdir(mode=0o750)
        self._chown(self.root / "run")

    def link(self, source: Path, name: str) -> str:
        """Hard-link a shared read-only file into the chroot (copy when across filesystems); its inside path."""
        target = self.host(name)
        try:
            source.stat()
        except OSError as exc:
            raise VMError(f"cannot read {source}: {exc}") from exc
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise VMError(f"cannot link {source} into the chroot: {exc}") from exc
            try:
                shutil.copyfile(source, target)
                os.chmod(target, 0o444)  # ours and read-only, as the original: never the jail user's to change
            except OSError as copy_exc:
                raise VMError(f"cannot copy {source} into the chroot: {copy_exc}") from copy_exc
        else:
            problem = self._shared_problem(source)
            if problem:
                os.unlink(target)
                raise ConfigError(problem)
        return self.inside(name)

    def _shared_problem(self, source: Path) -> str:
        """Why a hard-linked image cannot be shared with this jail's user, or "" (the link is the same inode:
        whatever the jail user may do to it, it does to every VM's image)."""
        if self.spec.uid == os.geteuid():  # a jail as ourselves (development): nothing to keep apart
            return ""
        st = source.stat()
        if not st.st_mode & stat.S_IROTH:
            return f"{source} must be world-readable to be shared with jailed VMs (chmod o+r)"
        writable = st.st_mode & stat.S_IWOTH or st.st_uid == self.spec.uid
        writable = writable or (st.st_gid == self.spec.gid and st.st_mode & stat.S_IWGRP)
        if writable:
            return f"{source} must not be writable by the jail user {self.spec.uid} (chown root, chmod go-w)"
        return ""

    def new_file(self, name: str, size: int = 0, mode: int = 0o600) -> str:
        """A per-VM file (sparse when ``size``) owned by the jail user; its inside path."""
        target = self.host(name)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                if size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise VMError(f"cannot create {target}: {exc}") from exc
        self._chown(target)
        return self.inside(name)

    def own(self, name: str) -> str:
        """A per-VM file made in the chroot by someone else (a disk clone) given to the jail user; its inside path."""
        self._chown(self.host(name))
        return self.inside(name)

    def remove(self) -> None:
        """Remove the chroot and the VM's cgroup (once its process is gone). Idempotent."""
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()  # <base>/firecracker, when this was the last VM
        cgroup = self.cgroup_dir()
        if cgroup is not None:
            with contextlib.suppress(OSError):
                cgroup.rmdir()

    def cgroup_dir(self) -> Path | None:
        if self.spec.cgroup_version != 2:
            return None
        parent = self.spec.parent_cgroup or self.spec.exec_file.name
        return cgroup2_root() / parent / self.spec.id

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0:
            return  # only root can give files away; unjailed runs keep the agent's own user
        try:
            os.chown(path, self.spec.uid, self.spec.gid)
        except OSError as exc:
            raise VMError(f"cannot chown {path} to the jail user: {exc}") from exc
