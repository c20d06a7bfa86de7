"""Failover (issue 15, item 3): a demoted primary, a blocked long-poll released by the demotion, Sentinel.

The "address" the control plane uses is a symlink to a server's Unix socket, moved to the new primary at
failover, as a DNS name or a virtual IP is moved: connections opened before still reach the old primary.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import EmbeddedRedis, free_port, server_binary
from smith.adapters.redis.jobs import RedisJobs
from smith.domain.jobs import Job, JobState
from smith.errors import ConfigError, Unavailable

CLASS = "smith-2vcpu"


def job(job_id: str) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=1, source="api")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    a = EmbeddedRedis(tmp_path / "a", port=free_port(), fsync="everysec")
    b = EmbeddedRedis(tmp_path / "b", port=free_port(), fsync="everysec")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def point(link: Path, target: Path) -> None:
    new = link.with_suffix(".new")
    new.unlink(missing_ok=True)
    new.symlink_to(target)
    os.replace(new, link)


async def demote(old: EmbeddedRedis, new: EmbeddedRedis, link: Path) -> None:
    """``new`` (a primary already) takes over: ``old`` becomes its replica and the address moves to ``new``."""
    plain = aioredis.Redis(host="127.0.0.1", port=old.port or 0)
    await plain.execute_command("REPLICAOF", "127.0.0.1", str(new.port))
    await plain.aclose()
    point(link, new.socket_path)


@pytest.fixture
async def jobs(pair: tuple[EmbeddedRedis, EmbeddedRedis], tmp_path: Path) -> AsyncIterator[tuple[RedisJobs, Path]]:
    link = tmp_path / "vip.sock"
    point(link, pair[0].socket_path)
    client = connect.client(f"unix://{link}?db=0")
    blocking = connect.client(f"unix://{link}?db=0", socket_timeout=30)
    out = RedisJobs(client, blocking=blocking)
    await out.ensure_groups([CLASS])
    yield out, link
    await client.aclose()
    await blocking.aclose()


async def test_after_a_demotion_writes_go_to_the_new_primary_not_503_until_restart(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], jobs: tuple[RedisJobs, Path]
) -> None:
    a, b = pair
    js, link = jobs
    await js.submit(job("1"))  # pooled connections to the old primary
    await js.cancel("1", "warm the script connection")
    await demote(a, b, link)
    got = await js.submit(job("2"))  # the webhook path (group commit pipeline)
    assert got.state is JobState.QUEUED
    assert await js.cancel("2", "operator") == "cancelled"  # a script call on a pooled connection
    await js.ensure_groups([CLASS])
    assert (await js.get("2")).state is JobState.CANCELLED


async def test_a_long_poll_released_by_a_demotion_is_unavailable_not_an_internal_error(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], jobs: tuple[RedisJobs, Path]
) -> None:
    a, b = pair
    js, link = jobs
    poll = asyncio.create_task(js.lease("agent-1", [CLASS], 20))
    plain = aioredis.Redis(host="127.0.0.1", port=a.port or 0, decode_responses=True)
    while not any(c.get("cmd") == "xreadgroup" for c in await plain.client_list()):
        await asyncio.sleep(0.05)  # the long-poll is blocked on the old primary
    await plain.aclose()
    await demote(a, b, link)
    try:
        got = await poll
    except Unavailable:  # 503 with Retry-After; the agent polls again
        return
    assert got is None  # or an empty answer (204)


def test_sentinel_urls_are_parsed() -> None:
    cfg = connect.parse_sentinel("redis+sentinel://:secret@s1:26379,s2:26380,s3/smith/2?sentinel_password=sp")
    assert cfg.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (cfg.service, cfg.db, cfg.password, cfg.sentinel_password, cfg.tls) == ("smith", 2, "secret", "sp", False)
    cfg = connect.parse_sentinel("rediss+sentinel://[::1]:26379/mymaster?db=3")
    assert (cfg.sentinels, cfg.service, cfg.db, cfg.tls) == ((("::1", 26379),), "mymaster", 3, True)
    for bad in ("redis+sentinel://s1:26379", "redis+sentinel://s1:x/smith", "redis+sentinel://s1/smith/x"):
        with pytest.raises(ConfigError):
            connect.parse_sentinel(bad)


@pytest.fixture
def sentinel(pair: tuple[EmbeddedRedis, EmbeddedRedis], tmp_path: Path) -> Iterator[int]:
    a, b = pair
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor smith 127.0.0.1 {a.port} 1\n"
        "sentinel down-after-milliseconds smith 1000\nsentinel failover-timeout smith 5000\n"
    )
    proc = subprocess.Popen([server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    yield port
    proc.terminate()
    proc.wait(10)


async def test_a_sentinel_url_follows_a_failover(pair: tuple[EmbeddedRedis, EmbeddedRedis], sentinel: int) -> None:
    a, b = pair
    replica = aioredis.Redis(host="127.0.0.1", port=b.port or 0, decode_responses=True)
    await replica.execute_command("REPLICAOF", "127.0.0.1", str(a.port))
    js = RedisJobs(connect.client(f"redis+sentinel://127.0.0.1:{sentinel}/smith?db=0"))
    deadline = time.monotonic() + 30
    while True:  # the Sentinel learns of the primary and its replica
        try:
            await js.ensure_groups([CLASS])
            break
        except Unavailable:
            assert time.monotonic() < deadline, "Sentinel never named a primary"
            await asyncio.sleep(0.2)
    await js.submit(job("1"))
    while (await replica.info("replication")).get("master_link_status") != "up" or not await replica.exists(
        keys.job("1")
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    plain = aioredis.Redis(host="127.0.0.1", port=sentinel, decode_responses=True)
    await plain.execute_command("SENTINEL", "FAILOVER", "smith")
    old = aioredis.Redis(host="127.0.0.1", port=a.port or 0, decode_responses=True)
    while (await replica.info("replication")).get("role") != "master" or (await old.info("replication")).get(
        "role"
    ) != "slave":
        assert time.monotonic() < deadline, "the failover did not happen"
        await asyncio.sleep(0.1)
    await old.aclose()
    got = None
    while got is None:  # writes go to the new primary once Sentinel names it
        try:
            got = await js.submit(job("2"))
        except Unavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    assert await replica.hget(keys.job("2"), "state") == "queued"
    await plain.aclose()
    await replica.aclose()
    await js.r.aclose()
