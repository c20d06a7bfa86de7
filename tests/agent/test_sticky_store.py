"""The sticky disk store without VMs: checkouts, atomic commits, discards, collection, eviction per org."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from smith.adapters.stickydisks import StickyDisks
from smith.domain.sticky import StickyRequest
from smith.errors import ConfigError

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("qemu-img", "qemu-io", "mkfs.ext4", "debugfs")),
    reason="needs qemu-utils (qemu-img, qemu-io) and e2fsprogs",
)
DEPS = StickyRequest("deps", "/cache", 32)


def write_file(layer: Path, tmp: Path, name: str, text: str) -> None:
    """What a guest would do: change a file in the filesystem seen through the layer."""
    raw = tmp / f"view-{name}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(layer), str(raw)], check=True)
    (tmp / name).write_text(text)
    subprocess.run(["debugfs", "-w", "-R", f"write {tmp / name} /{name}", str(raw)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(layer)], check=True)
    raw.unlink()


def cat(disk: Path, name: str) -> str:
    out = subprocess.run(["debugfs", "-R", f"cat /{name}", str(disk)], capture_output=True, text=True, check=True)
    return out.stdout


def test_commit_makes_the_layer_the_current_state_and_collects_the_old(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    first = store.checkout("acme", "acme/app", DEPS, "vm1", tmp_path / "l1.qcow2")
    empty = first.generation
    write_file(first.layer, tmp_path, "note", "hello\n")
    gen = store.commit(first)
    assert (first.disk / "current").resolve() == gen and cat(gen, "note") == "hello\n"
    assert not empty.exists() and not first.layer.exists() and not list((first.disk / "refs").iterdir())
    # Another repository's disk of the same name is another disk.
    other = store.checkout("acme", "acme/web", DEPS, "vm2", tmp_path / "l2.qcow2")
    assert other.disk != first.disk and cat(other.generation, "note") == ""


def test_a_discarded_checkout_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    co = store.checkout("acme", "acme/app", DEPS, "vm1", tmp_path / "l1.qcow2")
    write_file(co.layer, tmp_path, "note", "never\n")
    store.release(co)
    assert (co.disk / "current").resolve() == co.generation and cat(co.generation, "note") == ""


def test_last_writer_wins_and_a_running_checkout_keeps_its_generation(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    a = store.checkout("acme", "acme/app", DEPS, "a", tmp_path / "a.qcow2")
    b = store.checkout("acme", "acme/app", DEPS, "b", tmp_path / "b.qcow2")
    write_file(a.layer, tmp_path, "who", "a\n")
    write_file(b.layer, tmp_path, "who", "b\n")
    c = store.checkout("acme", "acme/app", DEPS, "c", tmp_path / "c.qcow2")
    store.commit(a)
    assert c.generation.exists()  # c still reads the state it started from
    threads = [threading.Thread(target=store.commit, args=(b,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cat((b.disk / "current").resolve(), "who") == "b\n"
    store.release(c)
    assert sorted(p.name for p in b.disk.glob("gen-*")) == [os.readlink(b.disk / "current")]


def test_a_torn_filesystem_is_never_committed(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    co = store.checkout("acme", "acme/app", DEPS, "vm1", tmp_path / "l1.qcow2")
    before = (co.disk / "current").resolve()
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(co.layer)], check=True, capture_output=True)
    with pytest.raises(ConfigError, match="e2fsck"):
        store.commit(co)
    assert (co.disk / "current").resolve() == before and not list(co.disk.glob(".gen-*"))


def test_past_the_quota_the_least_recently_used_idle_disks_go(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    for name in ("old", "busy", "new"):
        store.release(store.checkout("acme", "acme/app", StickyRequest(name, "/c", 32), "x", tmp_path / "x.qcow2"))
    busy = store.checkout("acme", "acme/app", StickyRequest("busy", "/c", 32), "vm", tmp_path / "busy.qcow2")
    other_org = store.checkout("zeta", "zeta/app", DEPS, "z", tmp_path / "z.qcow2")
    org = busy.disk.parent.parent
    old, new = org / "acme_app" / "old", org / "acme_app" / "new"
    os.utime(old / "used", (1, 1))
    store.quota = store.usage(org) - 1  # one disk too many
    assert store.evict(org) == [old]
    store.quota = 0
    assert store.evict(org) == [new]  # never the one in use, never another org's
    assert busy.disk.exists() and other_org.disk.exists()


def test_after_a_crash_stale_checkouts_and_half_commits_are_cleared(tmp_path: Path) -> None:
    store = StickyDisks(tmp_path / "sticky", 1 << 40)
    co = store.checkout("acme", "acme/app", DEPS, "vm1", tmp_path / "l1.qcow2")
    store.commit(store.checkout("acme", "acme/app", DEPS, "vm2", tmp_path / "l2.qcow2"))
    (co.disk / ".gen-123-abc.ext4").write_bytes(b"half")
    assert co.generation.exists()  # vm1 (crashed) still holds it
    store.clear_refs()
    assert not co.generation.exists() and not list(co.disk.glob(".gen-*"))
    assert [p.name for p in co.disk.glob("gen-*")] == [os.readlink(co.disk / "current")]
