"""Concurrent webhook deliveries share one write to Redis, and each is still recorded exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import free_port
from smith.adapters.redis.jobs import RedisJobs
from smith.domain.jobs import Job, JobState
from smith.errors import Unavailable

CLASS = "smith-2vcpu"


def job(job_id: str) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=4096, source="github")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


def count_connections(client: aioredis.Redis) -> list[int]:
    """How many times a connection is taken from the pool: one per separate write."""
    taken = [0]
    pool: Any = client.connection_pool
    original = pool.get_connection

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        taken[0] += 1
        return await original(*args, **kwargs)

    pool.get_connection = get_connection
    return taken


async def test_concurrent_deliveries_share_one_write_and_each_is_recorded_once(redis: aioredis.Redis) -> None:
    jobs = RedisJobs(redis)
    await jobs.ensure_groups([CLASS])
    await jobs.record_queued("warm-up", None, {}, {})  # loads the script: that is not what is counted
    taken = count_connections(redis)
    calls = [(f"d{i}", job(str(100 + i))) for i in range(8)]
    calls.insert(3, ("d1", job("101")))  # the same delivery twice in the group: recorded by the first only
    calls.append(("d-other", job("105")))  # another delivery of a job already queued in this group
    results = await asyncio.gather(
        *(jobs.record_queued(d, j, {"outcome": "queued", "delivery": d}, {"delivery": d}) for d, j in calls)
    )
    assert taken[0] == 1, f"{len(calls)} concurrent deliveries took {taken[0]} connections, not one write"
    outcomes = [r.outcome for r in results]
    assert outcomes == ["queued"] * 3 + ["duplicate"] + ["queued"] * 5 + ["known"]
    assert results[3].detail == '{"outcome":"queued","delivery":"d1"}'  # the first delivery's recorded outcome
    assert results[-1].detail == "queued"
    assert await redis.xlen(keys.queue(CLASS)) == 8
    assert await redis.zcard(keys.JOBS) == 8
    assert await redis.xlen(keys.EVENTS) == 1 + 9  # the warm-up, then all but the second d1
    for i in range(8):
        assert await redis.hget(keys.job(str(100 + i)), "state") == "queued"


async def test_deliveries_one_after_another_are_each_written(redis: aioredis.Redis) -> None:
    jobs = RedisJobs(redis)
    await jobs.ensure_groups([CLASS])
    first = await jobs.record_queued("a", job("1"), {"outcome": "queued"}, {})
    again = await jobs.record_queued("a", job("1"), {"outcome": "queued"}, {})
    assert (first.outcome, again.outcome) == ("queued", "duplicate")


async def test_a_queued_job_trims_the_listing(redis: aioredis.Redis) -> None:
    jobs = RedisJobs(redis, retention_max=3)
    await jobs.ensure_groups([CLASS])
    for i in range(5):
        await jobs.record_queued(f"t{i}", job(str(i)), {"outcome": "queued"}, {})
    assert await redis.zrange(keys.JOBS, 0, -1) == ["2", "3", "4"]


async def test_a_flushed_script_cache_is_loaded_again(redis: aioredis.Redis) -> None:
    jobs = RedisJobs(redis)
    await jobs.ensure_groups([CLASS])
    await jobs.record_queued("s1", job("1"), {"outcome": "queued"}, {})
    await redis.script_flush()
    results = await asyncio.gather(
        jobs.record_queued("s2", job("2"), {"outcome": "queued"}, {}),
        jobs.record_queued("s2", job("2"), {"outcome": "queued"}, {}),
    )
    assert [r.outcome for r in results] == ["queued", "duplicate"]


async def test_when_redis_is_gone_every_delivery_of_the_group_gets_the_error() -> None:
    """Each caller must hear that its write failed (the control plane then spools it), not only the first."""
    dead = connect.client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    jobs = RedisJobs(dead)
    results = await asyncio.gather(
        *(jobs.record_queued(f"g{i}", job(str(i)), {"outcome": "queued"}, {}) for i in range(5)),
        return_exceptions=True,
    )
    await dead.aclose()
    assert all(isinstance(r, Unavailable) for r in results), results
