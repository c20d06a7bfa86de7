"""The HTTP adapter counts an insert as stored only when the server stored it: against ClickHouse's HTTP interface
in front of chdb, made to fail the ways real servers do after (or while) answering 200."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from smith.adapters.clickhouse_http import HttpClickHouse, body_exception
from smith.errors import InvalidInput, SmithError, Unavailable
from smith.testing.clickhouse import ServerFaults

from .conftest import CH_PASSWORD


@pytest.fixture
async def ch(chdb_over_http: str, database: str) -> AsyncIterator[HttpClickHouse]:
    client = HttpClickHouse(chdb_over_http, password=CH_PASSWORD)
    await client.connect()
    await client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    await client.execute(f"CREATE TABLE {database}.t (n UInt64) ENGINE = MergeTree ORDER BY n")
    yield client
    await client.execute(f"DROP DATABASE IF EXISTS {database}")
    await client.aclose()


async def stored(ch: HttpClickHouse, database: str) -> list[int]:
    return [int(r["n"]) for r in await ch.select(f"SELECT n FROM {database}.t ORDER BY n")]


async def test_200_with_an_exception_header_is_a_failure(
    ch: HttpClickHouse, database: str, server_faults: ServerFaults
) -> None:
    """23.x-24.8 answer 200 with X-ClickHouse-Exception-Code when reading an insert's body times out."""
    server_faults.pending.append("header")
    with pytest.raises(Unavailable, match="SOCKET_TIMEOUT"):
        await ch.insert(f"{database}.t", b'{"n": 1}')
    assert await stored(ch, database) == []
    await ch.insert(f"{database}.t", b'{"n": 1}')  # the retry is stored
    assert await stored(ch, database) == [1]


async def test_an_exception_at_the_end_of_a_200_body_is_a_failure(
    ch: HttpClickHouse, database: str, server_faults: ServerFaults
) -> None:
    """25.x ends a body it had started streaming with an ``__exception__`` block: neither the insert nor the
    half-read rows of a select count."""
    server_faults.pending.append("partial")
    with pytest.raises(Unavailable, match="SOCKET_TIMEOUT"):
        await ch.insert(f"{database}.t", b'{"n": 1}')
    assert await stored(ch, database) == []
    await ch.insert(f"{database}.t", b"\n".join(b'{"n": %d}' % n for n in range(1, 101)))
    server_faults.pending.append("partial")
    with pytest.raises(Unavailable):
        await stored(ch, database)
    assert len(await stored(ch, database)) == 100


@pytest.mark.parametrize(
    "profile",
    [{"async_insert": "1"}, {"send_progress_in_http_headers": "1"}],
    ids=["async_insert", "progress_headers"],
)
async def test_a_profile_that_acknowledges_early_does_not_hide_a_failed_insert(
    ch: HttpClickHouse, database: str, server_faults: ServerFaults, profile: dict[str, str]
) -> None:
    server_faults.profile.update(profile)
    with pytest.raises(InvalidInput):
        await ch.insert(f"{database}.t", b'{"n": "twelve"}')
    await ch.insert(f"{database}.t", b'{"n": 12}')
    assert await stored(ch, database) == [12]


async def test_an_old_style_trailing_exception_is_a_failure_and_a_row_mentioning_one_is_not() -> None:
    assert body_exception(b'{"n":1}\nCode: 241. DB::Exception: Memory limit (total) exceeded\n') is not None
    assert body_exception(b'{"line":"Code: 241. DB::Exception: x"}\n') is None
    assert body_exception(b"") is None
    block = b'{"n":1}\n__exception__\r\ntag1\r\nCode: 241. DB::Exception: Memory\r\n33 tag1\r\n__exception__\r\n'
    assert str(body_exception(block)).startswith("Code: 241. DB::Exception: Memory")


async def test_inserts_go_compressed_with_the_settings_that_make_200_mean_stored() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="")

    for dialect, has_async in (("modern", True), ("legacy", False)):
        client = HttpClickHouse("http://ch", dialect=dialect, transport=httpx.MockTransport(answer))
        await client.insert("db.t", b'{"n": 1}')
        await client.aclose()
        request = seen.pop()
        params = request.url.params
        assert request.headers["content-encoding"] == "gzip"
        assert params["wait_end_of_query"] == "1" and params["send_progress_in_http_headers"] == "0"
        assert ("async_insert" in params) is has_async  # 18.16 does not know the setting and would refuse it
        if has_async:
            assert params["async_insert"] == "0" and params["wait_for_async_insert"] == "1"


async def test_an_exception_header_without_code_text_still_fails() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="", headers={"X-ClickHouse-Exception-Code": "209"})

    client = HttpClickHouse("http://ch", dialect="modern", transport=httpx.MockTransport(answer))
    with pytest.raises(SmithError):
        await client.insert("db.t", b'{"n": 1}')
    await client.aclose()


async def test_a_profile_that_forbids_turning_async_insert_off_gets_inserts_that_wait_for_the_flush(
    ch: HttpClickHouse, database: str, server_faults: ServerFaults
) -> None:
    """A constraint on ``async_insert`` refuses our ``async_insert=0``: inserts go on without it (one warning),
    with ``wait_for_async_insert=1`` so that the answer still comes after the data was stored (or refused)."""
    server_faults.profile["async_insert"] = "1"
    server_faults.constrained.add("async_insert")
    with capture_logs() as logs:
        with pytest.raises(InvalidInput):
            await ch.insert(f"{database}.t", b'{"n": "twelve"}')
        await ch.insert(f"{database}.t", b'{"n": 12}')
    assert await stored(ch, database) == [12]
    assert [e["setting"] for e in logs if e["log_level"] == "warning"] == ["async_insert"]


async def test_a_search_has_a_time_limit_and_is_stopped_when_abandoned(
    chdb_over_http: str, database: str, server_faults: ServerFaults
) -> None:
    """Searches carry max_execution_time (the server gives up on its own) and a query_id; a search whose caller
    gave up (the task is cancelled) is killed on the server by that id rather than left running."""
    import asyncio

    from smith.logs.store import LogStore

    ch = HttpClickHouse(chdb_over_http, password=CH_PASSWORD)
    store = LogStore(ch, database=database, search_seconds=7)
    try:
        await store.start()
        server_faults.seen.clear()
        await store.search("anything", since=0)
        (sql, params), *_ = [(q, p) for q, p in server_faults.seen if "LIMIT 1 BY" in q]
        assert params["max_execution_time"] == "7" and params["query_id"]
        server_faults.seen.clear()
        await store.page("job-x")
        await store.tail("job-x")
        await store.summary("job-x")
        reads = [p for q, p in server_faults.seen if q.startswith("SELECT")]
        assert len(reads) == 3 and all(p.get("max_execution_time") == "7" for p in reads)
        server_faults.seen.clear()
        slow = asyncio.create_task(ch.select("SELECT sleepEachRow(0.5) FROM numbers(6)"))
        while not server_faults.seen:
            await asyncio.sleep(0.01)
        query_id = server_faults.seen[0][1]["query_id"]
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
    finally:
        await ch.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()  # waits for the KILL QUERY it sent
    assert any(q.startswith("KILL QUERY") and query_id in q for q, _ in server_faults.seen)
