"""Growth and read-outs (issue 15, item 7): gone agents' consumers and hosts are dropped by the reaper, records of
jobs that never finish expire, queue depth is right after a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from smith.adapters.redis import keys
from smith.adapters.redis.jobs import RedisJobs
from smith.domain.jobs import Job, JobState

CLASS = "smith-2vcpu"


def job(job_id: str) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=1, source="api")


@pytest.fixture
async def jobs(redis_client: aioredis.Redis) -> AsyncIterator[RedisJobs]:
    out = RedisJobs(redis_client, retention_seconds=3600, unfinished_ttl=7200)
    await out.ensure_groups([CLASS])
    yield out


async def consumers(r: aioredis.Redis) -> set[str]:
    return {c["name"] for c in await r.xinfo_consumers(keys.queue(CLASS), keys.GROUP)}


async def test_consumers_of_agents_gone_for_long_are_deleted_and_the_hosts_index_trimmed(
    jobs: RedisJobs, redis_client: aioredis.Redis
) -> None:
    await jobs.submit(job("1"))
    assert await jobs.lease("holder", [CLASS], 1) is not None  # holds a lease, host record gone
    assert await jobs.lease("gone", [CLASS], 0.01) is None  # nothing held, host record gone
    assert await jobs.lease("alive", [CLASS], 0.01) is None
    await jobs.put_host("gone", {}, 0.01)
    await asyncio.sleep(0.2)  # all three are idle longer than gone_seconds below; gone's host record expired
    await jobs.put_host("alive", {}, 60)
    assert await jobs.forget_agents([CLASS], gone_seconds=0.1) == 1
    assert await consumers(redis_client) == {"holder", "alive"}
    assert await redis_client.zscore(keys.HOSTS, "gone") is None  # trimmed by the reaper, nobody read the queue
    assert await redis_client.zscore(keys.HOSTS, "alive") is not None
    assert (await jobs.get("1")).state is JobState.ASSIGNED


async def test_a_job_that_never_finishes_expires_and_a_final_one_gets_the_retention(
    jobs: RedisJobs, redis_client: aioredis.Redis
) -> None:
    await jobs.submit(job("2"))
    assert 3600 < await redis_client.ttl(keys.job("2")) <= 7200
    lease = await jobs.lease("a", [CLASS], 1)
    assert lease is not None
    await jobs.report("a", "2", JobState.SUCCEEDED)
    assert 0 < await redis_client.ttl(keys.job("2")) <= 3600


async def test_queue_depth_is_right_after_a_cancel(jobs: RedisJobs) -> None:
    for i in range(3):
        await jobs.submit(job(str(10 + i)))
    assert await jobs.lease("a", [CLASS], 1) is not None
    await jobs.cancel("11", "operator")  # an entry not yet read is deleted: the group's lag becomes unknown
    health = (await jobs.queue_health([CLASS]))[CLASS]
    assert (health["depth"], health["leases_in_flight"]) == (1, 1)
