"""An outage longer than the lease TTL does not revoke live leases (issue 15, item 4).

While Redis is down no agent can heartbeat, and a stream entry's idle time counts the downtime; reclaim right
after the restart would take every lease. It waits a lease TTL after Redis was last unreachable from here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from smith.adapters.redis import connect
from smith.adapters.redis.embedded import EmbeddedRedis, free_port
from smith.adapters.redis.jobs import RedisJobs
from smith.domain.jobs import Job, JobState
from smith.errors import Unavailable

CLASS = "smith-2vcpu"
TTL = 1.0


@pytest.fixture
async def own(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[EmbeddedRedis, RedisJobs]]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey-outage"), port=free_port(), fsync="always")
    server.start()
    client = connect.client(server.url)
    try:
        yield server, RedisJobs(client)
    finally:
        await client.aclose()
        server.stop()


async def test_leases_survive_an_outage_longer_than_the_ttl_until_a_ttl_passes_again(
    own: tuple[EmbeddedRedis, RedisJobs],
) -> None:
    server, jobs = own
    await jobs.ensure_groups([CLASS])
    for i in range(3):
        await jobs.submit(
            Job(id=str(i), state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=1, source="api")
        )
    leases = [await jobs.lease(f"agent-{i}", [CLASS], 1) for i in range(3)]
    assert all(lease is not None for lease in leases)

    server.stop()
    with pytest.raises(Unavailable):
        await jobs.reclaim([CLASS], TTL, 5)  # the reaper's tick during the outage
    down_until = time.monotonic() + 2 * TTL
    while time.monotonic() < down_until:  # longer than the TTL, as a failover or a restart can be
        await asyncio.sleep(0.1)
    server.start()

    assert (await jobs.reclaim([CLASS], TTL, 5))["requeued"] == 0
    for i in range(3):
        assert (await jobs.get(str(i))).state is JobState.ASSIGNED, "a live lease was revoked by the outage"

    # No heartbeat comes: once Redis has been reachable for a TTL, the leases expire as usual.
    requeued = 0
    deadline = time.monotonic() + 30
    while requeued < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        requeued += (await jobs.reclaim([CLASS], TTL, 5))["requeued"]
    assert requeued == 3
