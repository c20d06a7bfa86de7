"""Item 17: a sandbox this host refuses fails at its start with the launcher's words; dead warm ones are dropped."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.sandbox import SandboxVMM
from smith.agent.capacity import Ledger
from smith.agent.pool import WarmPool
from smith.domain.vms import VMShape
from smith.errors import VMError

HOSTFILES = Path(__file__).resolve().parents[2] / "src" / "smith" / "agent" / "hostfiles"
REFUSAL = "bwrap: setting up uid map: Permission denied"  # Ubuntu 24.04's AppArmor userns restriction


@pytest.fixture
def refused_bwrap() -> Iterator[Path]:
    """A bwrap that refuses as Ubuntu 24.04's does; where a job's uid can run it (the agent drops to it first)."""
    where = Path(tempfile.mkdtemp(prefix="smith-fake-bwrap-", dir="/tmp"))
    where.chmod(0o755)
    fake = where / "bwrap"
    fake.write_text(f"#!/bin/sh\necho '{REFUSAL}' >&2\nexit 1\n")
    fake.chmod(0o755)
    yield fake
    shutil.rmtree(where)


async def test_a_refused_bwrap_fails_the_probe_and_the_boot_with_its_own_words(
    tmp_path: Path, refused_bwrap: Path
) -> None:
    vmm = SandboxVMM(tmp_path / "sbx", bwrap=str(refused_bwrap))
    with pytest.raises(VMError) as probe:
        await vmm.probe()
    assert REFUSAL in probe.value.message and "AppArmor" in probe.value.message
    with pytest.raises(VMError) as boot:  # the boot fails, not the job it would have been given
        await vmm.boot(VMShape("c", 1, 256, 64), "doomed")
    assert REFUSAL in boot.value.message
    assert not list((tmp_path / "sbx").glob("sbx-*"))


async def test_the_probe_starts_a_real_sandbox(tmp_path: Path, launcher: str) -> None:
    await SandboxVMM(tmp_path / "sbx", launcher=launcher).probe()
    assert not list((tmp_path / "sbx").glob("sbx-*"))


async def test_the_warm_pool_drops_a_sandbox_that_died_while_idle(tmp_path: Path, launcher: str) -> None:
    vmm = SandboxVMM(tmp_path / "sbx", launcher=launcher)
    shape = VMShape("c", 1, 256, 64)
    ledger = Ledger(vcpus=4, memory_mib=4096, max_vms=4)
    pool = WarmPool(vmm, ledger, {"c": shape}, {"c": 1})
    try:
        pool.reconcile()
        while not pool.ready["c"]:
            await pool.changed.wait()
            pool.changed.clear()
        machine = pool.ready["c"][0]
        os.killpg(machine.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await machine.proc.wait()  # type: ignore[attr-defined]
        assert pool.take("c") is None  # not handed to a job
        assert ledger.free_vms == 4 and ledger.free_vcpus == 4
    finally:
        await pool.close()


def test_the_apparmor_profile_grants_bwrap_user_namespaces_only() -> None:
    profile = (HOSTFILES / "smith-bwrap.apparmor").read_text()
    assert "profile smith-bwrap /usr/bin/bwrap flags=(unconfined)" in profile
    body = profile.split("{", 1)[1].split("}", 1)[0]
    rules = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert rules == ["userns,", "include if exists <local/smith-bwrap>"]
