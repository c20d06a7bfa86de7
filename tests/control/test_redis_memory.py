"""Memory (issue 15, item 5): Smith refuses a Redis that may evict keys, and a full Redis spools deliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from smith.adapters.redis import connect
from smith.adapters.redis.embedded import EmbeddedRedis
from smith.adapters.redis.jobs import RedisJobs
from smith.control.service import ControlPlane
from smith.control.spool import Spool
from smith.errors import ConfigError
from tests.control.conftest import make_settings, queued_payload


@pytest.fixture
async def own(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedRedis, aioredis.Redis]]:
    server = EmbeddedRedis(tmp_path / "valkey")
    server.start()
    plain = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield server, plain
    await plain.aclose()
    server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random"])
async def test_a_redis_that_may_evict_keys_is_refused_unless_allowed(
    own: tuple[EmbeddedRedis, aioredis.Redis], policy: str
) -> None:
    server, plain = own
    await plain.config_set("maxmemory-policy", policy)
    jobs = RedisJobs(connect.client(server.url))
    with pytest.raises(ConfigError, match=policy):
        await ControlPlane(make_settings(server.url), jobs).start()
    plane = ControlPlane(make_settings(server.url, redis_allow_eviction=True), jobs)
    await plane.start()  # allowed: it starts, with a warning
    await plane.stop()
    await jobs.r.aclose()


async def test_noeviction_starts(own: tuple[EmbeddedRedis, aioredis.Redis]) -> None:
    server, _ = own
    jobs = RedisJobs(connect.client(server.url))
    plane = ControlPlane(make_settings(server.url), jobs)
    await plane.start()
    await plane.stop()
    await jobs.r.aclose()


async def test_a_delivery_meeting_out_of_memory_is_spooled_then_recorded(
    own: tuple[EmbeddedRedis, aioredis.Redis], tmp_path: Path
) -> None:
    server, plain = own
    jobs = RedisJobs(connect.client(server.url))
    spool = Spool(tmp_path / "spool")
    plane = ControlPlane(make_settings(server.url), jobs, spool=spool)
    await plain.config_set("maxmemory", 1)  # every write is refused with OOM
    assert (await plane.receive("workflow_job", "d1", queued_payload(701)))["outcome"] == "spooled"
    await plain.config_set("maxmemory", 0)
    assert await spool.replay(plane.webhook) == 1
    assert (await jobs.get("701")).state.value == "queued"
    await jobs.r.aclose()
