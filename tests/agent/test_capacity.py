"""The capacity ledger never promises more vCPUs, memory or VM slots than the host has."""

from __future__ import annotations

import contextlib
import random

import pytest

from smith.agent.capacity import Ledger
from smith.domain.vms import VMShape

SMALL = VMShape("self-hosted", 1, 2048)
MED = VMShape("smith-2vcpu", 2, 4096)
BIG = VMShape("smith-8vcpu", 8, 16384)


def test_reserve_until_full_then_refuse() -> None:
    ledger = Ledger(vcpus=4, memory_mib=8192, max_vms=3)
    assert ledger.reserve(MED) and ledger.reserve(MED)
    assert not ledger.reserve(SMALL)  # vCPUs are used up
    assert (ledger.free_vcpus, ledger.free_memory_mib, ledger.free_vms) == (0, 0, 1)
    ledger.release(MED)
    assert ledger.reserve(SMALL) and not ledger.reserve(MED)  # 1 vCPU left, MED needs 2
    assert not ledger.reserve(BIG)


def test_max_vms_limits_even_with_room() -> None:
    ledger = Ledger(vcpus=64, memory_mib=1 << 20, max_vms=2)
    assert ledger.reserve(SMALL) and ledger.reserve(SMALL)
    assert not ledger.reserve(SMALL)


def test_release_twice_is_caught() -> None:
    ledger = Ledger(vcpus=2, memory_mib=4096, max_vms=1)
    ledger.reserve(MED)
    ledger.release(MED)
    with pytest.raises(AssertionError):
        ledger.release(MED)


def test_random_walk_never_exceeds_capacity() -> None:
    rng = random.Random(7)
    ledger = Ledger(vcpus=16, memory_mib=32768, max_vms=6)
    held: list[VMShape] = []
    for _ in range(5000):
        if held and rng.random() < 0.45:
            ledger.release(held.pop(rng.randrange(len(held))))
        else:
            shape = rng.choice([SMALL, MED, BIG])
            if ledger.reserve(shape):
                held.append(shape)
        assert sum(s.vcpus for s in held) == ledger.used_vcpus <= 16
        assert sum(s.memory_mib for s in held) == ledger.used_memory_mib <= 32768
        assert len(held) == ledger.used_vms <= 6


async def test_a_leased_job_takes_back_the_room_a_warm_refill_took_meanwhile() -> None:
    """The agent offers its free room before a long-poll; a warm-pool refill may reserve that room while the lease
    is on its way. The leased job comes first: under ``hold()`` the refill's boot is cancelled and its room stays
    free for the job, even though freeing it wakes the pool's reconcile loop (which would start the refill again).
    Seen under load as jobs reported failed: "host had no room for the VM"."""
    import asyncio

    from smith.agent.pool import WarmPool

    boots = {"started": 0}
    started = asyncio.Event()

    class SlowVMM:
        async def boot(self, shape: VMShape, vm_id: str) -> object:
            boots["started"] += 1
            started.set()
            await asyncio.Event().wait()  # a boot that takes its time
            raise AssertionError("never reached")

    ledger = Ledger(vcpus=4, memory_mib=8192, max_vms=2)
    pool = WarmPool(SlowVMM(), ledger, {MED.runner_class: MED}, {MED.runner_class: 1})  # type: ignore[arg-type]
    assert ledger.reserve(MED)  # a job running
    loop = asyncio.create_task(pool.run(interval=0.01))  # the reconcile loop, as in the agent
    await started.wait()  # the refill took the rest
    assert not ledger.fits(MED)
    async with pool.hold():
        assert not await pool.evict_for(MED)  # nothing idle: only a boot in flight
        assert await pool.cancel_boots_for(MED)
        await asyncio.sleep(0.05)  # the reconcile loop runs, woken by the freed room
        assert ledger.reserve(MED)  # the leased job's room
    assert (ledger.used_vms, pool.booting[MED.runner_class], boots["started"]) == (2, 0, 1)
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    await pool.close()
