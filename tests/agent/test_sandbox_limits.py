"""A sandbox job's limits hold for the job as a whole, not per process or per shared uid: memory (tmpfs included),
processes, the work area's size; and they are gone with the job."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smith.adapters import workdisk
from smith.adapters.sandbox import SandboxMachine, SandboxVMM
from smith.domain.vms import VMShape
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig, GuestEvent

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="per-job cgroups, uids and work disks need root"),
]
SHAPE = VMShape("small", 1, 1024, disk_mib=64)


def config(run: str) -> GuestConfig:
    return GuestConfig(job=JobSpec(id="lim", runner_class="small", vcpus=1, memory_mib=1024, run=run))


@pytest.fixture
async def vmm(tmp_path: Path, launcher: str) -> AsyncIterator[SandboxVMM]:
    vmm = SandboxVMM(tmp_path / "sbx", max_procs=64, launcher=launcher)
    if vmm.cgroups is None:
        pytest.skip("no writable cgroup hierarchy here")
    yield vmm
    await vmm.cleanup_leftovers()


async def run(machine: SandboxMachine, script: str) -> list[GuestEvent]:
    try:
        await machine.assign(config(script))
        return [e async for e in machine.events()]
    finally:
        await machine.stop()


def out(events: list[GuestEvent], stream: str = "stdout") -> list[str]:
    return [e.line for e in events if e.type == "line" and e.stream == stream]


# Three processes of 600 MiB each: every one is under the 1 GiB class (RLIMIT_AS), together they are not.
THREE = """
for i in 1 2 3; do
    python3 -c 'import time; b = b"x" * (600 << 20); time.sleep(3)' &
done
for p in $(jobs -p); do if wait "$p"; then echo rc=0; else echo "rc=$?"; fi; done  # (the job runs under -e)
"""


async def test_several_processes_together_cannot_exceed_the_class_memory(vmm: SandboxVMM) -> None:
    events = await run(await vmm.boot(SHAPE, "mem"), THREE)
    codes = [line for line in out(events) if line.startswith("rc=")]
    assert len(codes) == 3, events
    assert codes != ["rc=0"] * 3  # at least one was killed by the job's memory cgroup


async def test_writing_past_disk_mib_or_past_memory_into_tmp_fails(vmm: SandboxVMM) -> None:
    script = (
        "head -c 100M /dev/zero > /work/big || echo work-full\n"
        "df -m /work | tail -1\n"
        "head -c 1100M /dev/zero > /tmp/big || echo tmp-full\n"
    )
    events = await run(await vmm.boot(SHAPE, "disk"), script)
    lines = out(events)
    assert "work-full" in lines and "tmp-full" in lines, events
    assert any("No space left on device" in line for line in out(events, "stderr"))


BOMB = """
python3 - <<'EOF'
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError:
    print("full", n, flush=True)
time.sleep(60)
EOF
"""


async def test_a_fork_bomb_in_one_job_does_not_stop_another_from_starting(vmm: SandboxVMM) -> None:
    bomb = await vmm.boot(SHAPE, "bomb")
    try:
        await bomb.assign(config(BOMB))
        async for event in bomb.events():
            if event.type == "line" and event.line.startswith("full"):
                assert int(event.line.split()[1]) < 64  # its own process limit
                break
        events = await run(await vmm.boot(SHAPE, "other"), "echo ok")
        assert out(events) == ["ok"] and events[-1].exit_code == 0, events
    finally:
        await bomb.stop()


async def test_cgroups_and_work_disks_are_gone_after_stop_and_after_cleanup(vmm: SandboxVMM) -> None:
    assert vmm.cgroups is not None
    machine = await vmm.boot(SHAPE, "gone")
    [group] = vmm.cgroups.find(vmm.cgroup_prefix)
    assert group.exists() and workdisk.mounts_under(vmm.base_dir)
    await run(machine, "true")
    assert not group.exists() and vmm.cgroups.find(vmm.cgroup_prefix) == []
    assert workdisk.mounts_under(vmm.base_dir) == []

    crashed = await vmm.boot(SHAPE, "crashed")
    await crashed.assign(config("sleep 300"))  # a job still running when its agent died
    again = SandboxVMM(vmm.base_dir, launcher=vmm.launcher)  # the next agent, on the same directory
    assert again.cgroup_prefix == vmm.cgroup_prefix
    assert await again.cleanup_leftovers() == ["sbx-crashed"]
    assert vmm.cgroups.find(vmm.cgroup_prefix) == [] and workdisk.mounts_under(vmm.base_dir) == []
    assert crashed.proc.returncode is not None or await crashed.proc.wait() is not None
    assert not crashed.root.exists()
