"""Sticky disks on one host: each a chain of immutable generations, the current one named by a symlink.

::

    <root>/<org>/<repo>/<name>/gen-<time>-<rand>.ext4   immutable full images (sparse raw ext4)
                              /current -> gen-...        the last committed state (rename(2): atomic)
                              /refs/<vm>                 a running VM's checkout: the generation it started from
                              /used                      touched at each checkout (eviction is least recently used)

A job's checkout is a qcow2 layer (in the VM's own folder) over the current generation: a copy-on-write clone,
constant time whatever the disk's size. Firecracker takes raw files only: its checkout (``raw=True``) is a
``vmdisks.raw_clone`` of the generation (reflink: constant time; else a sparse copy) in the VM's jail. When the
job succeeds and its guest has shut down cleanly, ``commit`` makes a new full image of it (QEMU: ``qemu-img
convert`` of the layer and its generation, time growing with the disk's allocated bytes; Firecracker: the clone
itself, renamed into the disk's folder, or cloned there from another filesystem), checks it with ``e2fsck``,
then renames ``current`` to it: last writer wins, a reader sees the old or the new state,
never a mix. A failed job, or a guest that had to be killed, discards its layer. Generations nobody uses any
more are deleted; past a quota per org, whole disks are evicted, least recently used first, never one in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smith.adapters import vmdisks
from smith.domain.sticky import StickyRequest
from smith.errors import SmithError
from smith.logging import get_logger
from smith.rootfs import ext4

log = get_logger("smith.sticky")


@dataclass(frozen=True)
class Checkout:
    disk: Path  # the disk's folder
    generation: Path  # what the layer starts from
    layer: Path  # the VM's qcow2 over it
    vm_id: str
    request: StickyRequest
    raw: bool = False  # the layer is a whole raw copy (Firecracker), not a qcow2 over the generation


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in part) or "_"


class StickyDisks:
    def __init__(self, root: Path, quota_bytes_per_org: int) -> None:
        self.root = root
        self.quota = quota_bytes_per_org

    def disk_dir(self, org: str, repo: str, name: str) -> Path:
        return self.root / _safe(org or "-") / _safe(repo or "-") / _safe(name)

    def checkout(
        self, org: str, repo: str, request: StickyRequest, vm_id: str, layer: Path, *, raw: bool = False
    ) -> Checkout:
        disk = self.disk_dir(org, repo, request.name)
        (disk / "refs").mkdir(parents=True, exist_ok=True)
        current = disk / "current"
        with _locked(disk):
            if not current.exists():  # first use: an empty filesystem is the first committed state
                gen = self._new_gen(disk)
                ext4.make_empty(gen, request.size_mib << 20, label=request.name[:16], owner="0:0")
                self._point(disk, gen)
            generation = (disk / os.readlink(current)).resolve()
            (disk / "refs" / vm_id).write_text(generation.name)
            (disk / "used").touch()
        if raw:
            vmdisks.raw_clone(generation, layer)
        else:
            vmdisks.qcow2_overlay(generation, layer)
        return Checkout(disk, generation, layer, vm_id, request, raw)

    def commit(self, checkout: Checkout) -> Path:
        """The layer over its generation as the disk's new current state (whole, then renamed into place)."""
        gen = self._new_gen(checkout.disk)
        tmp = gen.with_name("." + gen.name)
        try:
            if checkout.raw:
                _move(checkout.layer, tmp)
            else:
                ext4.run(
                    "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k", str(checkout.layer), str(tmp)
                )
            ext4.run("e2fsck", "-fn", str(tmp))  # a clean, unmounted filesystem or nothing
            with _locked(checkout.disk):
                os.replace(tmp, gen)
                self._point(checkout.disk, gen)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.release(checkout)
        self.evict(checkout.disk.parent.parent)
        return gen

    def release(self, checkout: Checkout) -> None:
        """Forget the VM's checkout (its layer goes with the VM's folder) and delete unused generations."""
        checkout.layer.unlink(missing_ok=True)
        with _locked(checkout.disk):
            (checkout.disk / "refs" / checkout.vm_id).unlink(missing_ok=True)
            self._collect(checkout.disk)

    def clear_refs(self) -> None:
        """After a crash no VM runs: every checkout is stale."""
        for ref in self.root.glob("*/*/*/refs/*"):
            ref.unlink(missing_ok=True)
        for disk in self.root.glob("*/*/*"):
            for tmp in disk.glob(".gen-*"):  # a commit a crash cut short
                tmp.unlink(missing_ok=True)
            with _locked(disk):
                self._collect(disk)

    def usage(self, org_dir: Path) -> int:
        return sum(p.stat().st_blocks * 512 for p in org_dir.glob("*/*/gen-*"))

    def evict(self, org_dir: Path) -> list[Path]:
        """Whole disks of this org, least recently used first, until its usage fits the quota."""
        evicted = []
        disks = sorted(org_dir.glob("*/*"), key=lambda d: _mtime(d / "used"))
        for disk in disks:
            if self.usage(org_dir) <= self.quota:
                break
            with _locked(disk):
                if any((disk / "refs").iterdir()):
                    continue
                shutil.rmtree(disk, ignore_errors=True)
            evicted.append(disk)
        return evicted

    # -- internals -------------------------------------------------------------------------------------------

    def _new_gen(self, disk: Path) -> Path:
        return disk / f"gen-{time.time_ns()}-{secrets.token_hex(3)}.ext4"

    def _point(self, disk: Path, gen: Path) -> None:
        tmp = disk / f".current.{secrets.token_hex(4)}"
        os.symlink(gen.name, tmp)
        os.replace(tmp, disk / "current")

    def _collect(self, disk: Path) -> None:
        with contextlib.suppress(OSError):
            keep = {os.readlink(disk / "current")}
            keep |= {ref.read_text() for ref in (disk / "refs").iterdir()}
            for gen in disk.glob("gen-*"):
                if gen.name not in keep:
                    gen.unlink(missing_ok=True)


def _move(clone: Path, dest: Path) -> None:
    """A VM's raw clone becomes ``dest`` (renamed; cloned when on another filesystem), the agent's file again."""
    try:
        os.rename(clone, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        vmdisks.raw_clone(clone, dest)
    os.chown(dest, os.geteuid(), os.getegid())  # it was the jail user's
    dest.chmod(0o600)


async def settle(store: StickyDisks, checkouts: list[Checkout], succeeded: bool, clean: bool, vm_id: str) -> list[str]:
    """After a job: commit each disk if the job succeeded and its guest shut down cleanly, else discard it. The
    names committed (a commit that fails is logged and discarded)."""
    committed = []
    for checkout in checkouts:
        if succeeded and clean:
            try:
                await asyncio.to_thread(store.commit, checkout)
                committed.append(checkout.request.name)
                continue
            except SmithError as exc:
                log.warning("sticky disk not committed", vm_id=vm_id, disk=checkout.request.name, error=str(exc))
        await asyncio.to_thread(store.release, checkout)
    log.info("sticky disks", vm_id=vm_id, committed=committed, clean_shutdown=clean, succeeded=succeeded)
    return committed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def _locked(disk: Path) -> Iterator[None]:
    """One process at a time changes which generations a disk has (checkouts and commits run in threads)."""
    disk.mkdir(parents=True, exist_ok=True)
    with (disk / "lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
