"""The log store against chdb and against a real ClickHouse server over HTTP (Debian's 18.16 here: legacy)."""

from __future__ import annotations

import time

import pytest

from smith.adapters.clickhouse import LEGACY, MODERN, dialect_for_version, like_contains, literal
from smith.logs.ingest import encode, parse
from smith.logs.store import LogStore, migrations
from smith.ports import ClickHouse

NOW = time.time()


def rows(job: str, seqs: range, *, text: str = "line {seq}", **fields: object) -> bytes:
    import orjson

    body = b"\n".join(
        orjson.dumps(
            {"job_id": job, "seq": s, "ts": fields.get("ts", NOW) + s / 1000, "line": text.format(seq=s)}
            | {k: v for k, v in fields.items() if k != "ts"}
        )
        for s in seqs
    )
    return encode(parse(body, host_default="host-1").rows)


async def test_migrations_apply_once_and_are_recorded(store: LogStore) -> None:
    assert await store.migrate() == []  # start() applied them already
    recorded = await store.ch.select(f"SELECT version, name FROM {store.db}.schema_migrations")
    assert [(int(r["version"]), r["name"]) for r in recorded] == [(v, n) for v, n, _ in migrations()]
    again = LogStore(store.ch, database=store.db)
    assert await again.migrate() == []


async def test_schema_matches_the_dialect(store: LogStore) -> None:
    rows_ = await store.ch.select(
        f"SELECT engine_full FROM system.tables WHERE database = {literal(store.db)} AND name = 'log_lines'"
    )
    engine = rows_[0]["engine_full"]
    assert "ReplacingMergeTree" in engine
    if store.ch.dialect == MODERN:
        assert "TTL day + toIntervalDay(30)" in engine
        create = await store.ch.select(f"SHOW CREATE TABLE {store.table}")
        assert "ngrambf_v1" in str(create[0])
    else:
        assert "TTL" not in engine


async def test_retention_change_updates_the_ttl(store: LogStore) -> None:
    if store.ch.dialect == LEGACY:
        pytest.skip("legacy servers have no TTL; the retention sweep is tested below")
    changed = LogStore(store.ch, database=store.db, retention_days=7)
    await changed.start()
    engine = (
        await store.ch.select(
            f"SELECT engine_full FROM system.tables WHERE database = {literal(store.db)} AND name = 'log_lines'"
        )
    )[0]["engine_full"]
    assert "toIntervalDay(7)" in engine


async def test_page_tail_state_and_summary(store: LogStore) -> None:
    await store.insert(rows("job-1", range(1, 2501)))
    await store.insert(rows("job-2", range(1, 11), stream="stderr", text="ERROR {seq}"))
    page = await store.page("job-1", after=0, limit=1000)
    assert [r.seq for r in page] == list(range(1, 1001))
    page = await store.page("job-1", after=2400, limit=1000)
    assert [r.seq for r in page] == list(range(2401, 2501))
    tail = await store.tail("job-1", limit=1000)
    assert [r.seq for r in tail] == list(range(1501, 2501))
    assert tail[-1].line == "line 2500" and tail[-1].host == "host-1"
    assert abs(tail[-1].ts - (NOW + 2.5)) < 1e-3
    assert await store.job_state("job-1") == (2500, False)
    assert await store.job_state("nope") is None
    s = await store.summary("job-2")
    assert s is not None
    assert (s.lines, s.error_lines, s.stderr_lines, s.last_seq, s.complete) == (10, 10, 10, 10, False)
    assert s.bytes == sum(len(f"ERROR {i}") for i in range(1, 11))
    assert await store.summary("nope") is None


async def test_complete_after_the_last_line(store: LogStore) -> None:
    await store.insert(rows("job-1", range(1, 4)))
    await store.insert(rows("job-1", range(4, 5), last=True, stream="system", text="exit code 0"))
    assert await store.job_state("job-1") == (4, True)
    summary = await store.summary("job-1")
    assert summary is not None and summary.complete


async def test_dedup_helpers(store: LogStore) -> None:
    await store.insert(rows("job-1", range(1, 101)))
    await store.insert(rows("job-2", range(5, 8)))
    assert await store.max_seqs(["job-1", "job-2", "job-3"]) == {"job-1": 100, "job-2": 7}
    found = await store.existing({"job-1": (95, 120), "job-2": (1, 5)})
    assert found == {"job-1": {95, 96, 97, 98, 99, 100}, "job-2": {5}}


async def test_search_text_filters_and_limit(store: LogStore) -> None:
    await store.insert(rows("job-a", range(1, 301), repo="acme/api", host="h1", text="compiling unit {seq}"))
    await store.insert(rows("job-b", range(1, 4), repo="acme/web", host="h2", text="Fatal ERROR in step {seq}"))
    await store.insert(rows("job-c", range(1, 3), repo="acme/web", host="h2", text="100% done_ok it's \\ok"))
    hits, limited = await store.search("error", since=NOW - 60)
    assert {(h.job_id, h.seq) for h in hits} == {("job-b", 1), ("job-b", 2), ("job-b", 3)} and not limited
    assert [h.seq for h in hits] == [3, 2, 1]  # newest first
    hits, _ = await store.search("ERROR", repo="acme/api")
    assert hits == []
    hits, _ = await store.search("", host="h2", limit=10)
    assert len(hits) == 5
    hits, limited = await store.search("compiling", limit=50)
    assert len(hits) == 50 and limited
    # LIKE wildcards and quotes in the text match themselves
    assert [h.job_id for h in (await store.search("100% done_ok"))[0]] == ["job-c", "job-c"]
    assert (await store.search("0%_d"))[0] == []
    assert len((await store.search("it's \\ok"))[0]) == 2
    assert (await store.search("x'); DROP TABLE log_lines; --"))[0] == []
    assert await store.job_state("job-a") is not None
    # time range: nothing in the future, everything from a minute ago
    assert (await store.search("", since=NOW + 3600))[0] == []
    assert len((await store.search("", since=NOW - 60, until=NOW + 3600, limit=1000))[0]) == 305


async def test_search_non_ascii_is_case_insensitive(store: LogStore) -> None:
    await store.insert(rows("job-u", range(1, 3), text="Übersetzung FEHLGESCHLAGEN {seq}"))
    hits, _ = await store.search("übersetzung")
    assert len(hits) == 2


async def test_retention_sweep_drops_old_days(store: LogStore) -> None:
    old = NOW - 40 * 86400
    await store.insert(rows("job-old", range(1, 6), ts=old))
    await store.insert(rows("job-new", range(1, 6)))
    dropped = await store.sweep_retention()
    assert len(dropped) == 1
    assert await store.job_state("job-old") is None
    assert await store.job_state("job-new") == (5, False)


async def test_adapter_errors_are_ours(clickhouse: ClickHouse) -> None:
    from smith.errors import UpstreamError

    await clickhouse.connect()
    with pytest.raises(UpstreamError):
        await clickhouse.select("SELEC nonsense")


def test_literals_and_dialects() -> None:
    assert literal("a'b\\c\n") == "'a\\'b\\\\c\\n'"
    assert literal(5) == "5" and literal(True) == "1"
    assert like_contains("50%_x") == "'%50\\\\%\\\\_x%'"
    assert dialect_for_version("18.16.1") == LEGACY
    assert dialect_for_version("26.9.2.1") == MODERN
    assert dialect_for_version("20.3.1") == MODERN
