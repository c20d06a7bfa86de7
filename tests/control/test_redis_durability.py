"""Durability (issue 15, item 2): a 202 waits for replicas (WAIT) or the AOF (WAITAOF), and a delivery whose
wait falls short is spooled to disk as well, so a failover to a replica that never got it loses no job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import EmbeddedRedis, free_port
from smith.adapters.redis.group import Durability
from smith.adapters.redis.jobs import RedisJobs
from smith.control.app import create_app
from smith.control.service import ControlPlane
from smith.control.spool import Spool
from smith.errors import ConfigError
from tests.control.conftest import make_settings, queued_payload

CLASS = "smith-2vcpu"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    primary = EmbeddedRedis(
        tmp_path / "primary", port=free_port(), fsync="everysec", extra=("repl-diskless-sync-delay 0",)
    )
    replica = EmbeddedRedis(
        tmp_path / "replica", port=free_port(), fsync="everysec", extra=(f"replicaof 127.0.0.1 {primary.port}",)
    )
    primary.start()
    replica.start()
    yield primary, replica
    replica.stop()
    primary.stop()


async def linked(primary: aioredis.Redis, replicas: int) -> None:
    """Until the primary sees ``replicas`` replicas online and caught up (a replica's first sync takes a moment)."""
    for _ in range(1000):
        info = await primary.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
        caught_up = [v for v in online if v["offset"] >= info["master_repl_offset"]]
        if len(online) == replicas and len(caught_up) == replicas:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"replicas online: wanted {replicas}, info {info}")


@pytest.fixture
async def plane(
    request: pytest.FixtureRequest, servers: tuple[EmbeddedRedis, EmbeddedRedis], tmp_path: Path
) -> AsyncIterator[tuple[ControlPlane, aioredis.Redis, aioredis.Redis]]:
    """A control plane in ``replicas`` mode on the pair; the wait's timeout in ms is the param (300 if none)."""
    primary, replica = servers
    p = aioredis.Redis.from_url(primary.url, decode_responses=True)
    r = aioredis.Redis.from_url(replica.url, decode_responses=True)
    await linked(p, 1)
    durability = Durability("replicas", 1, getattr(request, "param", 300))
    jobs = RedisJobs(connect.client(primary.url), durability=durability)
    settings = make_settings(primary.url, reclaim_interval_seconds=3600)  # no background replay here
    out = ControlPlane(settings, jobs, spool=Spool(tmp_path / "spool"))
    await out.start()
    yield out, p, r
    await out.stop()
    await jobs.r.aclose()
    await p.aclose()
    await r.aclose()


@pytest.mark.parametrize("plane", [10_000], indirect=True)
async def test_with_a_replica_connected_the_202_comes_after_the_replica_holds_the_delivery(
    plane: tuple[ControlPlane, aioredis.Redis, aioredis.Redis],
) -> None:
    cp, _, replica = plane
    # The replica applies nothing from its primary for a moment (a paused replica pauses its replication stream
    # too): without WAIT the 202 would come before the replica has the delivery.
    await replica.execute_command("CLIENT", "PAUSE", 200, "WRITE")
    got = await cp.receive("workflow_job", "d1", queued_payload(901))
    assert got["outcome"] == "queued"
    assert await replica.hget(keys.job("901"), "state") == "queued"  # read at once: no polling
    assert cp.spool is not None and len(cp.spool) == 0


@pytest.mark.parametrize("failover_lost_it", [False, True])
async def test_with_the_replica_down_the_delivery_is_spooled_too_and_replays_to_one_job(
    servers: tuple[EmbeddedRedis, EmbeddedRedis],
    plane: tuple[ControlPlane, aioredis.Redis, aioredis.Redis],
    failover_lost_it: bool,
) -> None:
    _, replica_server = servers
    cp, primary, _ = plane
    assert cp.spool is not None
    replica_server.stop()
    await linked(primary, 0)
    got = await cp.receive("workflow_job", "d1", queued_payload(902))
    assert got["outcome"] == "queued"  # answered 202: recorded on the primary, and on disk
    assert await primary.hget(keys.job("902"), "state") == "queued"
    assert len(cp.spool) == 1
    assert await cp.spool.replay(cp.webhook) == 0  # still not on a replica: the file stays
    assert len(cp.spool) == 1
    if failover_lost_it:  # the primary's copy is gone, as after a failover to a replica that never got it
        await primary.flushall()
    replica_server.start()
    await linked(primary, 1)
    assert await cp.spool.replay(cp.webhook) == 1
    assert len(cp.spool) == 0
    assert await primary.hget(keys.job("902"), "state") == "queued"
    assert await primary.xlen(keys.queue(CLASS)) == 1  # exactly one job queued


async def test_aof_mode_answers_after_waitaof(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "valkey", fsync="everysec") as server:
        plain = aioredis.Redis.from_url(server.url, decode_responses=True)
        jobs = RedisJobs(connect.client(server.url), durability=Durability("aof", timeout_ms=5000))
        cp = ControlPlane(make_settings(server.url), jobs, spool=Spool(tmp_path / "spool"))
        await cp.start()  # checks that the server has WAITAOF and appendonly
        await plain.config_resetstat()
        got = await cp.receive("workflow_job", "d1", queued_payload(903))
        assert got["outcome"] == "queued"
        stats = await plain.info("commandstats")
        assert stats["cmdstat_waitaof"]["calls"] >= 1  # one per pipeline (twice if the scripts were not loaded)
        assert cp.spool is not None and len(cp.spool) == 0
        await cp.stop()
        await jobs.r.aclose()
        await plain.aclose()


async def test_aof_mode_is_refused_at_start_without_appendonly(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "valkey", extra=("appendonly no",)) as server:
        jobs = RedisJobs(connect.client(server.url), durability=Durability("aof"))
        with pytest.raises(ConfigError, match="WAITAOF"):
            await ControlPlane(make_settings(server.url), jobs).start()
        await jobs.r.aclose()


def test_the_settings_choose_the_wait(tmp_path: Path) -> None:
    settings = make_settings(
        "redis://127.0.0.1:1/0",
        data_dir=tmp_path,
        redis_durability="replicas",
        redis_min_replicas=2,
        redis_wait_timeout_ms=250,
    )
    app = create_app(settings)
    assert app.state.plane.jobs.durability == Durability("replicas", 2, 250)
    assert app.state.plane.jobs.durability.command() == ("WAIT", 2, 250)
    assert Durability("aof", timeout_ms=250).command() == ("WAITAOF", 1, 0, 250)
    assert make_settings("redis://127.0.0.1:1/0", data_dir=tmp_path).redis_durability == "local"


async def test_replicas_mode_warns_at_start_when_fewer_replicas_are_connected(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "valkey") as server:
        jobs = RedisJobs(connect.client(server.url), durability=Durability("replicas", 1))
        cp = ControlPlane(make_settings(server.url), jobs)
        with capture_logs() as logs:
            await cp.start()
        await cp.stop()
        await jobs.r.aclose()
    warned = [e for e in logs if "SMITH_REDIS_MIN_REPLICAS" in e["event"]]
    assert warned and warned[0]["connected"] == 0 and warned[0]["asked"] == 1
