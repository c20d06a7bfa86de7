"""Redis Cluster (issue 15, item 6): every key carries the ``{smith}`` hash tag and every key a script touches is
in its KEYS, so the control plane and the cache work on a cluster (here a real one-shard Valkey cluster, all
16384 slots on one node), through a plain client and through redis-py's cluster client (``redis+cluster://``).
Keys written before the hash tag are renamed at start and keep working.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import EmbeddedRedis, free_port
from smith.adapters.redis.jobs import RedisJobs
from smith.cache import keys as cache_keys
from smith.cache.metadata import Metadata
from smith.domain.cache import EntryState, Tenant
from smith.domain.jobs import Job, JobState
from tests.control.conftest import Control, operator_token, queued_payload

CLASS = "smith-2vcpu"


def cluster_port() -> int:
    """A free port a cluster node can take: its bus listens 10000 higher, so the port must be 55535 or less (a
    free ephemeral port is often above that: the node then refuses to start) and the bus port free too."""
    for _ in range(500):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    data = tmp_path_factory.mktemp("cluster")
    server = EmbeddedRedis(
        data,
        port=cluster_port(),
        fsync="everysec",
        extra=("cluster-enabled yes", f"cluster-config-file {data / 'nodes.conf'}", "cluster-node-timeout 2000"),
    )
    server.start()
    r = redis.Redis(port=server.port)
    r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 20
    while b"cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the one-shard cluster did not come up"
        time.sleep(0.05)
    r.close()
    yield server
    server.stop()


def urls(server: EmbeddedRedis) -> dict[str, str]:
    return {
        "plain": f"redis://127.0.0.1:{server.port}/0",
        "cluster": f"redis+cluster://127.0.0.1:{server.port}",
    }


@pytest.fixture(params=["plain", "cluster"])
def cluster_url(request: pytest.FixtureRequest, cluster: EmbeddedRedis) -> str:
    r = redis.Redis(port=cluster.port)
    r.flushall()
    r.close()
    return urls(cluster)[request.param]


def test_a_cluster_refuses_keys_of_two_slots(cluster: EmbeddedRedis) -> None:
    """What made every script fail before: keys of different slots in one call are refused (CROSSSLOT)."""
    r = redis.Redis(port=cluster.port)
    with pytest.raises(redis.exceptions.ResponseError, match="same slot"):
        r.eval("return redis.call('GET', KEYS[1])", 2, "smith:job:1", "smith:jobs")
    assert r.eval("return redis.call('GET', KEYS[1])", 2, keys.job("1"), keys.JOBS) is None
    r.close()


def test_every_key_has_the_one_hash_tag() -> None:
    samples = [keys.job("1"), keys.JOBS, keys.queue("c"), keys.host("a"), keys.HOSTS, keys.EVENTS, keys.reply("t")]
    samples += [keys.delivery("d"), cache_keys.entry(1), cache_keys.lru("o"), cache_keys.UPLOADS, cache_keys.GC]
    samples += [cache_keys.index("o", "r", "s", "v"), cache_keys.usage("o"), cache_keys.reply("t")]
    assert all(k.startswith("{smith}:") for k in samples)


def test_jobs_flow_end_to_end_on_a_cluster(control_factory: Callable[..., Control], cluster_url: str) -> None:
    """Webhooks (group commit), long-poll lease over several class streams, heartbeat, report, cancel, queue
    health and host records (MULTI) all run on the cluster."""
    control = control_factory(redis_url=cluster_url)
    base = 7_100_000 if "cluster" in cluster_url else 7_200_000
    for i in range(3):
        r = control.deliver(queued_payload(base + i))
        assert r.status_code == 202, r.text
        assert r.json()["outcome"] != "duplicate"
    assert control.deliver(queued_payload(base), delivery=None).status_code == 202
    agent = control.agent(f"cl-agent-{base}")
    got = agent.post("/v1/agents/lease", json={"free_vcpus": 64, "free_memory_mib": 262144, "wait_seconds": 1})
    assert got.status_code == 200, got.text
    job_id = got.json()["job"]["id"]
    beat = agent.post("/v1/agents/heartbeat", json={"jobs": [job_id]})
    assert beat.status_code == 200, beat.text
    assert agent.post(f"/v1/agents/jobs/{job_id}/status", json={"state": "running"}).status_code == 200
    done = agent.post(f"/v1/agents/jobs/{job_id}/status", json={"state": "succeeded", "exit_code": 0})
    assert done.status_code == 200 and done.json()["state"] == "succeeded"
    with control.client(operator_token()) as op:
        other = next(str(base + i) for i in range(3) if str(base + i) != job_id)
        cancelled = op.post(f"/v1/jobs/{other}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 200, cancelled.text
        assert op.get(f"/v1/jobs/{other}").json()["state"] == "cancelled"
        queue = op.get("/v1/queue").json()
        assert queue["leases_in_flight"] == 0 and queue["queued_total"] == 1
        assert any(h["agent_id"] == f"cl-agent-{base}" for h in queue["hosts"])
        assert op.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"


async def test_cache_metadata_on_a_cluster(cluster_url: str) -> None:
    """Reserve, claim, finalize, prefix lookup, usage and delete: the scripts that built the org's keys in Lua
    now get them in KEYS."""
    client = connect.client(cluster_url)
    meta = Metadata(client)
    who = Tenant(org=f"org-{'c' if 'cluster' in cluster_url else 'p'}", repo="web", ref="refs/heads/main")
    try:
        res = await meta.reserve(who, "deps-linux-1", "v1", 3)
        assert res.won
        assert await meta.claim_part(res.entry_id, "0", 3, limit=10, max_parts=4, ranged=True) == "ok"
        await meta.add_part(res.entry_id, "0", 3)
        assert await meta.finalize(res.entry_id, 3) == "ok"
        found = await meta.newest_with_prefix(who, who.write_scope, "v1", "deps-linux")
        assert found is not None and found.id == res.entry_id and found.state is EntryState.FINAL
        assert (await meta.usage(who.org))[who.org]["bytes"] == 3
        assert await meta.least_recent(who.org, 10) == [res.entry_id]
        assert await meta.delete(res.entry_id) == (who.org, EntryState.FINAL)
        assert (await meta.usage(who.org))[who.org]["bytes"] == 0
        assert await meta.find(who, who.write_scope, "v1", "deps-linux-1") is None
    finally:
        await client.aclose()


async def test_old_keys_are_renamed_at_start_and_keep_working(redis_url: str) -> None:
    """A deployment upgraded in place: a queued job, its stream and consumer group, a dedup record with its TTL
    and a cache entry written under ``smith:`` are renamed to ``{smith}:`` and used as before."""
    r: aioredis.Redis = connect.client(redis_url)
    try:
        await r.flushdb()
        jobs = RedisJobs(r)
        await jobs.ensure_groups([CLASS])
        await jobs.submit(
            Job(id="old-1", state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=1, source="api")
        )
        await r.set(keys.delivery("d-1"), "{}", ex=600)
        meta = Metadata(r)
        who = Tenant(org="acme", repo="web", ref="refs/heads/main")
        entry = await meta.reserve(who, "k", "v1", 1)
        await meta.finalize(entry.entry_id, 1)
        # Put everything back under the names an older Smith used.
        for key in [k async for k in r.scan_iter(match="{smith}:*")]:
            await r.rename(key, keys.LEGACY_PREFIX + key[len(keys.PREFIX) :])
        assert not [k async for k in r.scan_iter(match="{smith}:*")]

        assert await jobs.migrate_keys() > 0
        assert not [k async for k in r.scan_iter(match=f"{keys.LEGACY_PREFIX}*")]
        assert 0 < await r.ttl(keys.delivery("d-1")) <= 600
        lease = await jobs.lease("agent-after-upgrade", [CLASS], 1)
        assert lease is not None and lease.job.id == "old-1"
        assert (await meta.newest_with_prefix(who, who.write_scope, "v1", "k")).id == entry.entry_id  # type: ignore[union-attr]
        assert await jobs.migrate_keys() == 0  # once only
    finally:
        await r.flushdb()
        await r.aclose()


def test_cluster_urls_are_parsed() -> None:
    nodes, user, password, tls = connect.parse_cluster("rediss+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001)] and (user, password, tls) == ("u", "p@ss", True)
    with pytest.raises(Exception, match="host:port"):
        connect.parse_cluster("redis+cluster://")
