"""Item 21: disk on the host: job logs capped and rotated, a full disk survived, disk in the ledger, old images
and templates pruned."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.agent.capacity import Ledger, disk_budget, disk_room
from smith.agent.logsink import LocalFiles
from smith.domain.vms import VMShape
from smith.images.refresh import prune_images
from smith.wire.guest import GuestEvent


def line(text: str, n: int = 0) -> GuestEvent:
    return GuestEvent(type="line", ts=time.time(), stream="stdout", line=text, seq=n)


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs")
    where = Path(tempfile.mkdtemp(prefix="smith-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "smith-full", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=True)
    where.rmdir()


async def test_a_full_disk_drops_log_lines_and_fails_nothing(small_disk: Path) -> None:
    out = LocalFiles(small_disk / "logs")
    for n in range(5000):  # ~600 KiB of events into 256 KiB
        await out.emit("job-1", line("x" * 100, n))
    await out.emit("job-1", GuestEvent(type="exit", ts=time.time(), exit_code=0))
    await out.close_job("job-1")
    assert 0 < (small_disk / "logs" / "job-1.ndjson").stat().st_size <= 256 << 10
    assert disk_budget(small_disk, None, 0) == 1  # a full disk counts as full, not as "not counted"


async def test_a_jobs_log_is_capped_and_keeps_its_exit(tmp_path: Path) -> None:
    out = LocalFiles(tmp_path / "logs", max_job_bytes=2000)
    for n in range(100):
        await out.emit("job-1", line("y" * 50, n))
    await out.emit("job-1", GuestEvent(type="exit", ts=time.time(), exit_code=3))
    await out.close_job("job-1")
    got = events(tmp_path / "logs" / "job-1.ndjson")
    notes = [e for e in got if e.get("stream") == "system"]
    assert len(notes) == 1 and "at most 2000 bytes" in str(notes[0]["line"])
    assert got[-1]["type"] == "exit" and got[-1]["exit_code"] == 3
    assert (tmp_path / "logs" / "job-1.ndjson").stat().st_size < 2000 + 1000


async def test_old_job_logs_are_rotated_out_oldest_first(tmp_path: Path) -> None:
    out = LocalFiles(tmp_path / "logs", max_total_bytes=3000)
    for n in range(5):
        old = tmp_path / "logs" / f"old-{n}.ndjson"
        old.write_text("z" * 999 + "\n")
        os.utime(old, (1_000_000 + n, 1_000_000 + n))
    await out.emit("running", line("still here"))
    await out.emit("done", line("finished"))
    await out.close_job("done")
    left = sorted(p.name for p in (tmp_path / "logs").glob("*.ndjson"))
    assert left == ["done.ndjson", "old-3.ndjson", "old-4.ndjson", "running.ndjson"]
    await out.aclose()


def test_disk_is_counted_in_the_ledger() -> None:
    big = VMShape("big", 1, 512, disk_mib=8192)
    ledger = Ledger(vcpus=8, memory_mib=8192, max_vms=8, disk_mib=10_000)
    assert ledger.reserve(big) and not ledger.reserve(big)  # a second sparse 8 GiB disk would overcommit
    pool = SimpleNamespace(shapes={"big": big}, idle=lambda: [])
    assert not disk_room(ledger, pool)  # the lease loop asks for nothing until a job ends
    ledger.release(big)
    assert disk_room(ledger, pool) and ledger.free_disk_mib == 10_000
    assert Ledger(vcpus=1, memory_mib=512, max_vms=1).reserve(big)  # 0: disk not counted


def test_old_guest_images_are_pruned_but_one(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for n, key in enumerate(("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc", "dddddddddddddddd")):
        (images / key).mkdir(parents=True)
        (images / key / "manifest.json").write_text(json.dumps({"kernel_version": f"6.1.0-{n}"}))
        os.utime(images / key, (1_000_000 + n, 1_000_000 + n))
    (images / "rootfs-other").mkdir()  # not this builder's: never touched
    assert sorted(prune_images(images, "dddddddddddddddd")) == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
    assert sorted(p.name for p in images.iterdir()) == ["cccccccccccccccc", "dddddddddddddddd", "rootfs-other"]


async def test_templates_of_an_older_agent_are_removed_at_start(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("k")
    vmm = QemuVMM(tmp_path / "q", QemuConfig(kernel=kernel, qemu_bin="/bin/true"))
    snaps = tmp_path / "q" / "snapshots"
    snaps.mkdir()
    (snaps / "0123456789abcdef.state").write_bytes(b"old")
    (snaps / "1x512-0123456789abcdef.state").write_bytes(b"current")
    assert await vmm.cleanup_leftovers() == ["0123456789abcdef.state"]
    assert [p.name for p in snaps.iterdir()] == ["1x512-0123456789abcdef.state"]
