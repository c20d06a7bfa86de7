"""S3 resilience: backoff, the circuit breaker, and what clients see while the store or Redis is down."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from smith.adapters.resilience import CircuitBreaker, Resilient
from smith.adapters.s3 import S3BlobStore, translate
from smith.cache.app import create_app
from smith.cache.settings import CacheSettings
from smith.errors import InvalidInput, NotFound, Unavailable
from smith.retry import RetryPolicy
from smith.testing.servers import ThreadedServer, free_port
from tests.cache.conftest import client, make_s3
from tests.cache.test_protocol import TWIRP, VERSION, create, save_v2


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_probes_then_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, reset=10.0, clock=clock)
    for _ in range(3):
        b.before()
        b.failure()
    assert b.state == "open"
    with pytest.raises(Unavailable) as caught:
        b.before()
    assert caught.value.retry_after == pytest.approx(10.0)
    clock.now = 10.5
    b.before()  # the one probe
    with pytest.raises(Unavailable):
        b.before()  # others still wait while it runs
    b.failure()
    assert b.state == "open"  # a failed probe re-opens at once
    clock.now = 21.0
    b.before()
    b.success()
    assert b.state == "closed"


def test_backoff_is_jittered_and_capped() -> None:
    p = RetryPolicy(retries=5, base=0.1, max=1.0)
    for attempt in range(8):
        assert 0.0 <= p.delay(attempt) <= min(1.0, 0.1 * 2**attempt)


def fails_twice() -> tuple[Callable[[], str], dict[str, int]]:
    """A call that is reset twice, then answers "ok"; and its call count."""
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionResetError("reset")
        return "ok"

    return flaky, calls


async def test_retries_then_succeeds_and_does_not_retry_bad_requests() -> None:
    flaky, calls = fails_twice()

    io = Resilient(RetryPolicy(3, 0.001, 0.002), CircuitBreaker(2, 60), translate)
    assert await io.call(flaky) == "ok"
    assert calls["n"] == 3

    def bad() -> None:
        calls["n"] += 1
        raise InvalidInput("no")

    calls["n"] = 0
    with pytest.raises(InvalidInput):
        await io.call(bad)
    assert calls["n"] == 1
    assert io.breaker.state == "closed"


def dead_store(spool: Path) -> S3BlobStore:
    """An S3 store whose endpoint nothing listens on; its circuit opens after two failed calls."""
    return make_s3(
        f"http://127.0.0.1:{free_port()}",
        "nope",
        spool,
        policy=RetryPolicy(1, 0.001, 0.002),
        breaker=CircuitBreaker(2, 60),
    )


async def test_dead_endpoint_opens_circuit_and_fails_fast(tmp_path: Path) -> None:
    store = dead_store(tmp_path)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await store.check()
    assert store.io.breaker.state == "open"
    with pytest.raises(Unavailable, match="circuit open"):
        await store.write_part("1", "p", chunks(b"x"), 1)
    assert os.listdir(tmp_path) == []  # nothing spooled


async def test_parts_of_any_size_become_one_blob(moto_url: str, bucket: str, tmp_path: Path) -> None:
    store: S3BlobStore = make_s3(moto_url, bucket, tmp_path)
    parts = [os.urandom(1024 * 1024), os.urandom(3 * 1024 * 1024), os.urandom(10)]
    for i, p in enumerate(parts):
        await store.write_part("7", f"p{i}", chunks(p), len(p))
    assert await store.complete("7", ["p2", "p0", "p1"], "entries/acme/7") == sum(map(len, parts))
    got = b"".join([c async for c in store.read("entries/acme/7")])
    assert got == parts[2] + parts[0] + parts[1]
    assert b"".join([c async for c in store.read("entries/acme/7", 5, 14)]) == got[5:15]
    assert set(await store._part_sizes("7")) == {"p0", "p1", "p2"}  # the parts are the blob: nothing copied
    await store.delete("entries/acme/7")
    assert await store._part_sizes("7") == {} and await store.size("entries/acme/7") is None
    with pytest.raises(NotFound):
        await store.complete("7", ["p0"], "entries/acme/8")
    with pytest.raises(InvalidInput):
        await store.write_part("9", "p", chunks(b"abc"), 5)
    assert await store.size("entries/acme/absent") is None


async def test_abandoned_uploads_are_reported(moto_url: str, bucket: str, tmp_path: Path) -> None:
    store = make_s3(moto_url, bucket, tmp_path)
    await store.write_part("42", "p", chunks(b"abc"), 3)
    assert await store.stale_uploads(-1) == ["42"]
    assert await store.stale_uploads(3600) == []
    await store.abort("42")
    assert await store.stale_uploads(-1) == []


def test_store_down_lookups_miss_and_saves_refused(serve: Any, tmp_path: Path) -> None:
    dead = make_s3(
        f"http://127.0.0.1:{free_port()}",
        "b",
        tmp_path,
        policy=RetryPolicy(0, 0.001, 0.001),
        breaker=CircuitBreaker(1, 60),
    )
    srv = serve(dead)
    c = client(srv)
    for _ in range(3):
        r = create(c, "k")
        assert r.status_code == 200
        assert r.json()["ok"] is False
        assert "unavailable" in r.json()["message"]
    legacy = c.post("/_apis/artifactcache/caches", json={"key": "k", "version": VERSION})
    assert legacy.status_code == 409
    miss = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "k", "version": VERSION})
    assert miss.json()["ok"] is False
    assert c.get("/healthz").status_code == 503


def test_redis_down_lookups_miss_and_saves_refused(settings: CacheSettings, store: Any) -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with ThreadedServer(create_app(settings, store=store, redis=dead, janitor=False)) as srv:
        c = client(srv)
        r = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "k", "version": VERSION})
        assert r.status_code == 200 and r.json()["ok"] is False
        assert c.get("/_apis/artifactcache/cache", params={"keys": "k", "version": VERSION}).status_code == 204
        assert create(c, "k").json()["ok"] is False


def test_outage_then_recovery(serve: Any, moto_url: str, bucket: str, tmp_path: Path) -> None:
    store = make_s3(moto_url, bucket, tmp_path, breaker=CircuitBreaker(1, 0.2))
    srv = serve(store)
    c = client(srv)
    store.io.breaker.failure()  # as if the last call failed: open
    assert create(c, "after").json()["ok"] is False
    asyncio.run(asyncio.sleep(0.25))
    save_v2(c, "after", b"back")  # the probe succeeds and closes the circuit
    assert store.io.breaker.state == "closed"
    assert httpx.get(srv.url + "/healthz").json()["store"] == "ok"


def _open(clock: Clock, failures: int = 1, reset: float = 10.0) -> CircuitBreaker:
    b = CircuitBreaker(failures=failures, reset=reset, clock=clock)
    for _ in range(failures):
        b.before()
        b.failure()
    assert b.state == "open"
    clock.now += reset + 0.5  # half-open: the next call is the probe
    return b


async def test_a_probe_keeps_its_slot_through_its_retries() -> None:
    """The probe fails twice and then succeeds within its retries: the circuit closes (it used to stay open for
    good: the second attempt asked the breaker again, was refused as 'another probe', and nothing was recorded)."""
    clock = Clock()
    io = Resilient(RetryPolicy(3, 0.001, 0.002), _open(clock), translate)
    flaky, calls = fails_twice()

    assert await io.call(flaky) == "ok"
    assert io.breaker.state == "closed"


async def test_a_probe_that_fails_with_retries_reopens_and_the_next_probe_runs() -> None:
    clock = Clock()
    io = Resilient(RetryPolicy(2, 0.001, 0.002), _open(clock), translate)

    def down() -> None:
        raise ConnectionResetError("reset")

    with pytest.raises(Unavailable):
        await io.call(down)
    assert io.breaker.state == "open"
    with pytest.raises(Unavailable, match="circuit open"):
        await io.call(lambda: "refused before the reset")
    clock.now += 11
    assert await io.call(lambda: "ok") == "ok"  # a new probe goes through and closes the circuit
    assert io.breaker.state == "closed"


async def test_a_cancelled_probe_gives_its_slot_back() -> None:
    clock = Clock()
    io = Resilient(RetryPolicy(2, 0.001, 0.002), _open(clock), translate)
    started, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    def hang() -> None:
        loop.call_soon_threadsafe(started.set)
        release.wait(30)

    probe = asyncio.create_task(io.call(hang))
    await started.wait()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    release.set()
    assert await io.call(lambda: "ok") == "ok"
    assert io.breaker.state == "closed"


async def test_a_part_write_probes_a_half_open_circuit(moto_url: str, bucket: str, tmp_path: Path) -> None:
    """The part writer asks the breaker before spooling; that check must not take the probe slot itself."""
    clock = Clock()
    store = make_s3(moto_url, bucket, tmp_path, breaker=_open(clock))
    assert await store.write_part("5", "p", chunks(b"abc"), 3) == 3
    assert store.io.breaker.state == "closed"
