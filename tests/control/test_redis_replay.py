"""Every script gives the same answer when redis-py replays it after a timeout (issue 15, item 1).

The server stalls (``DEBUG SLEEP 1.5``) while a client with a 1 s socket timeout waits for a script's reply:
redis-py times out, reconnects and sends the script again; the server then runs it twice. Each test checks the
script really ran twice (EVALSHA calls in INFO commandstats) and that the caller got the first run's answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from smith.adapters.redis import connect, keys
from smith.adapters.redis.embedded import EmbeddedRedis, free_port
from smith.adapters.redis.jobs import RedisJobs
from smith.cache.metadata import Metadata
from smith.domain.cache import Tenant
from smith.domain.jobs import Job, JobState

T = TypeVar("T")
CLASS = "smith-2vcpu"
AGENT = "agent-1"


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(
        tmp_path_factory.mktemp("valkey-debug"),
        port=free_port(),
        fsync="everysec",
        extra=("enable-debug-command local",),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def plain(debug_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(debug_server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def jobs(debug_server: EmbeddedRedis, plain: aioredis.Redis) -> AsyncIterator[RedisJobs]:
    client = connect.client(debug_server.url, socket_timeout=1.0)  # production's client, with a short timeout
    out = RedisJobs(client)
    await out.ensure_groups([CLASS])
    await load_scripts(out, plain)
    yield out
    await client.aclose()


async def load_scripts(owner: object, plain: aioredis.Redis) -> None:
    """Load an adapter's scripts as a running server has them: a replay is of the script, not of NOSCRIPT."""
    for value in vars(owner).values():
        if isinstance(value, AsyncScript):
            await plain.script_load(value.script)


async def evalsha_calls(plain: aioredis.Redis) -> int:
    stats = await plain.info("commandstats")
    got = stats.get("cmdstat_evalsha", {})
    return int(got.get("calls", 0)) - int(got.get("failed_calls", 0))  # not the NOSCRIPT that loads a script


async def stalled(plain: aioredis.Redis, client: aioredis.Redis, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``; its first script (EVALSHA or a pipeline) meets a server asleep for 1.5 s. Checks the script
    was sent twice (its first reply was lost) and returns what the caller got."""
    before = await evalsha_calls(plain)
    conn = await plain.connection_pool.get_connection()
    stalls: list[bool] = []

    async def stall() -> None:
        if not stalls:
            stalls.append(True)
            await conn.send_command("DEBUG", "SLEEP", "1.5")
            await asyncio.sleep(0.2)  # order only: the server is inside DEBUG SLEEP before the script arrives

    original_command, original_pipeline = client.execute_command, client.pipeline

    async def execute_command(*args: Any, **options: Any) -> Any:
        if args[0] == "EVALSHA":
            await stall()
        return await original_command(*args, **options)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original_pipeline(*args, **kwargs)
        original_execute = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            await stall()
            return await original_execute(*a, **k)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    client.execute_command = execute_command  # type: ignore[method-assign]
    client.pipeline = pipeline  # type: ignore[method-assign]
    try:
        result = await call()
    finally:
        del client.execute_command, client.pipeline
        if stalls:
            await conn.read_response()
        await plain.connection_pool.release(conn)
    assert await evalsha_calls(plain) - before >= 2, "the stall did not make redis-py send the script twice"
    return result


def job(job_id: str) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, runner_class=CLASS, vcpus=2, memory_mib=4096, source="api")


async def read_entry(plain: aioredis.Redis) -> tuple[str, str]:
    got: Any = await plain.xreadgroup(keys.GROUP, AGENT, {keys.queue(CLASS): ">"}, count=1)
    entry_id, fields = got[0][1][0]
    return str(entry_id), str(fields["job"])


async def leased(jobs: RedisJobs, plain: aioredis.Redis, job_id: str) -> str:
    await jobs.submit(job(job_id))
    entry, _ = await read_entry(plain)
    lease = await jobs._take(AGENT, keys.queue(CLASS), entry, job_id)
    assert lease is not None
    return entry


async def test_a_replayed_claim_returns_the_same_lease_and_strands_nothing(
    jobs: RedisJobs, plain: aioredis.Redis
) -> None:
    await jobs.submit(job("1"))
    entry, job_id = await read_entry(plain)
    lease = await stalled(plain, jobs.r, lambda: jobs._take(AGENT, keys.queue(CLASS), entry, job_id))
    assert lease is not None and lease.entry == entry and lease.job.agent_id == AGENT
    got = await jobs.get("1")
    assert got.state is JobState.ASSIGNED and got.attempts == 1
    pending = await plain.xpending_range(keys.queue(CLASS), keys.GROUP, min="-", max="+", count=10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry, AGENT)]  # the lease is still there


async def test_a_replayed_report_of_a_final_state_succeeds(jobs: RedisJobs, plain: aioredis.Redis) -> None:
    await leased(jobs, plain, "2")
    done = await stalled(plain, jobs.r, lambda: jobs.report(AGENT, "2", JobState.SUCCEEDED, exit_code=0))
    assert done.state is JobState.SUCCEEDED


async def test_a_replayed_cancel_answers_cancelled(jobs: RedisJobs, plain: aioredis.Redis) -> None:
    await jobs.submit(job("3"))
    assert await stalled(plain, jobs.r, lambda: jobs.cancel("3", "operator")) == "cancelled"


async def test_a_replayed_submit_returns_the_job(jobs: RedisJobs, plain: aioredis.Redis) -> None:
    got = await stalled(plain, jobs.r, lambda: jobs.submit(job("4")))
    assert got.state is JobState.QUEUED
    assert await plain.xlen(keys.queue(CLASS)) == 1


async def test_a_replayed_webhook_delivery_is_queued_once_and_answers_queued(
    jobs: RedisJobs, plain: aioredis.Redis
) -> None:
    res = await stalled(plain, jobs.r, lambda: jobs.record_queued("d5", job("5"), {"outcome": "queued"}, {"d": 5}))
    assert res.outcome == "queued"
    assert await plain.xlen(keys.queue(CLASS)) == 1


async def test_a_replayed_requeue_answers_requeued(jobs: RedisJobs, plain: aioredis.Redis) -> None:
    entry = await leased(jobs, plain, "6")
    assert await stalled(plain, jobs.r, lambda: jobs.requeue("6", entry, 5, "test")) == "requeued"
    assert (await jobs.get("6")).state is JobState.QUEUED
    assert await plain.xlen(keys.queue(CLASS)) == 1


async def test_replayed_cache_reserve_and_finalize_answer_as_the_first_run(
    debug_server: EmbeddedRedis, plain: aioredis.Redis
) -> None:
    client = connect.client(debug_server.url, socket_timeout=1.0)
    meta = Metadata(client)
    await load_scripts(meta, plain)
    await client.ping()  # a connection is open: the stall meets the script, not the connection's handshake
    who = Tenant(org="acme", repo="web", ref="refs/heads/main", read_refs=("refs/heads/main",))
    try:
        res = await stalled(plain, client, lambda: meta.reserve(who, "k", "v1", 10))
        assert res.won
        assert await stalled(plain, client, lambda: meta.finalize(res.entry_id, 10)) == "ok"
    finally:
        await client.aclose()


async def test_a_replayed_completed_delivery_dequeues_and_answers_dequeued(
    jobs: RedisJobs, plain: aioredis.Redis
) -> None:
    await jobs.submit(job("7"))
    res = await stalled(
        plain,
        jobs.r,
        lambda: jobs.record_update("d7", "7", CLASS, "completed", "cancelled", {}, {}, None, "completed on GitHub"),
    )
    assert res.outcome == "dequeued"
    assert (await jobs.get("7")).state is JobState.CANCELLED
