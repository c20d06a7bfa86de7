"""The batcher on chdb: group commit, and what one bad request in a group does to the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import orjson
import pytest

from smith.adapters.chdb import ChdbClickHouse
from smith.errors import Unavailable, UpstreamError
from smith.logs.batcher import Batcher
from smith.logs.ingest import Line, parse
from smith.logs.store import LogStore

T0 = float(int(time.time()) - 3600)  # recent: lines older than the retention are dropped (TTL)


class PickyClickHouse(ChdbClickHouse):
    """chdb that refuses any insert holding the text ``poison`` (for good) or ``busy`` (for now), and counts."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.inserts: list[int] = []

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        self.inserts.append(rows.count(b'"seq"'))
        if b"poison" in rows:
            raise UpstreamError("ClickHouse: Code: 117. DB::Exception: refused (INCORRECT_DATA)", retryable=False)
        if b"busy" in rows:
            raise Unavailable("ClickHouse is busy", retry_after=1.0)
        await super().insert(table, rows, settings)


def lines(job: str, seqs: range, text: str = "line") -> list[Line]:
    body = b"\n".join(orjson.dumps({"job_id": job, "seq": s, "ts": T0 + s, "line": f"{text} {s}"}) for s in seqs)
    return parse(body, host_default="h").lines


@pytest.fixture
async def setup(chdb_dir: Path, database: str) -> AsyncIterator[tuple[Batcher, PickyClickHouse, LogStore]]:
    ch = PickyClickHouse(chdb_dir)
    store = LogStore(ch, database=database)
    await store.start()
    ch.inserts.clear()  # (the migrations' own rows)
    batcher = Batcher(store, batch_rows=10_000, min_rows=10_000, delay=0.05)
    batcher.start()
    yield batcher, ch, store
    await batcher.stop()
    await ch.execute(f"DROP DATABASE IF EXISTS {database}")
    await ch.aclose()


async def stored(store: LogStore, job: str) -> list[int]:
    return [r.seq for r in await store.page(job, limit=10_000)]


async def test_requests_that_arrive_together_are_one_insert(setup: tuple[Batcher, PickyClickHouse, LogStore]) -> None:
    batcher, ch, store = setup
    results = await asyncio.gather(*(batcher.submit(lines(f"g{n}", range(1, 101))) for n in range(5)))
    assert results == [(100, 0)] * 5
    assert ch.inserts[-1] == 500 and batcher.stats.batches == 1
    assert [await stored(store, f"g{n}") for n in range(5)] == [list(range(1, 101))] * 5


async def test_a_request_the_server_refuses_fails_alone(setup: tuple[Batcher, PickyClickHouse, LogStore]) -> None:
    batcher, ch, store = setup
    outcomes = await asyncio.gather(
        batcher.submit(lines("ok-1", range(1, 11))),
        batcher.submit(lines("bad", range(1, 11), text="poison")),
        batcher.submit(lines("ok-2", range(1, 11))),
        return_exceptions=True,
    )
    assert outcomes[0] == (10, 0) and outcomes[2] == (10, 0)
    assert isinstance(outcomes[1], UpstreamError) and not outcomes[1].retryable
    assert ch.inserts == [30, 10, 10, 10]  # the group, then each request on its own
    assert await stored(store, "ok-1") == list(range(1, 11)) and await stored(store, "ok-2") == list(range(1, 11))
    assert await store.job_state("bad") is None
    # A retry of the refused job's neighbours is not needed; a new request goes through as usual.
    assert await batcher.submit(lines("ok-1", range(11, 13))) == (2, 0)


async def test_a_busy_server_fails_the_group_for_a_retry(setup: tuple[Batcher, PickyClickHouse, LogStore]) -> None:
    batcher, ch, store = setup
    outcomes = await asyncio.gather(
        batcher.submit(lines("b-1", range(1, 6))),
        batcher.submit(lines("b-2", range(1, 6), text="busy")),
        return_exceptions=True,
    )
    assert all(isinstance(o, Unavailable) and o.retryable for o in outcomes)
    assert ch.inserts == [10]  # not split: retrying later helps everyone
    assert await batcher.submit(lines("b-1", range(1, 6))) == (5, 0)
    assert await stored(store, "b-1") == [1, 2, 3, 4, 5]


async def test_retried_and_overlapping_requests_are_stored_once(
    setup: tuple[Batcher, PickyClickHouse, LogStore],
) -> None:
    batcher, _, store = setup
    assert await batcher.submit(lines("d", range(1, 51))) == (50, 0)
    both = await asyncio.gather(batcher.submit(lines("d", range(41, 61))), batcher.submit(lines("d", range(55, 71))))
    assert sum(new for new, _ in both) == 20 and sum(dup for _, dup in both) == 16
    assert await stored(store, "d") == list(range(1, 71))


async def test_two_lanes_write_two_jobs_at_once_but_never_one_job_twice(chdb_dir: Path, database: str) -> None:
    class Slow(ChdbClickHouse):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.in_flight: list[set[str]] = []
            self.most = 0
            self.overlap = False

        async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
            jobs = {j for j in ("a", "b") if f'"job_id":"{j}"'.encode() in rows}
            self.overlap |= any(jobs & other for other in self.in_flight)
            self.in_flight.append(jobs)
            self.most = max(self.most, len(self.in_flight))
            try:
                await asyncio.sleep(0.2)
                await super().insert(table, rows, settings)
            finally:
                self.in_flight.remove(jobs)

    ch = Slow(chdb_dir)
    store = LogStore(ch, database=database)
    await store.start()
    batcher = Batcher(store, batch_rows=100, min_rows=1, delay=0.0, lanes=2)
    batcher.start()
    try:
        # a1 goes out at once; a2 must wait for it (same job) while b1 takes the other lane.
        first = asyncio.create_task(batcher.submit(lines("a", range(1, 51))))
        await asyncio.sleep(0.05)
        results = await asyncio.gather(
            first, batcher.submit(lines("a", range(51, 101))), batcher.submit(lines("b", range(1, 51)))
        )
        assert results == [(50, 0)] * 3
        assert ch.most == 2 and not ch.overlap
        assert await stored(store, "a") == list(range(1, 101)) and await stored(store, "b") == list(range(1, 51))
    finally:
        await batcher.stop()
        await ch.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()
