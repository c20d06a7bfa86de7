"""The log store against chdb and against a real ClickHouse server over HTTP (Debian's 18.16 here: legacy)."""

from __future__ import annotations

import string
import time
from pathlib import Path

import pytest

from smith.adapters.clickhouse import LEGACY, MODERN, dialect_for_version, like_contains, literal
from smith.logs.ingest import ROW_COLUMNS, Line, encode_rows, parse, ts_us
from smith.logs.store import MODERN_ONLY, LogStore, migrations, statements
from smith.ports import ClickHouse

NOW = time.time()


def rows(job: str, seqs: range, *, text: str = "line {seq}", **fields: object) -> list[Line]:
    import orjson

    body = b"\n".join(
        orjson.dumps(
            {"job_id": job, "seq": s, "ts": fields.get("ts", NOW) + s / 1000, "line": text.format(seq=s)}
            | {k: v for k, v in fields.items() if k != "ts"}
        )
        for s in seqs
    )
    return parse(body, host_default="host-1").lines


async def put(store: LogStore, lines: list[Line]) -> None:
    await store.insert(store.encode(lines))


async def test_migrations_apply_once_and_are_recorded(store: LogStore) -> None:
    assert await store.migrate() == []  # start() applied them already
    recorded = await store.ch.select(f"SELECT version, name FROM {store.db}.schema_migrations ORDER BY version")
    wanted = [(v, n) for v, n, sql in migrations() if not (store.legacy and sql.startswith(MODERN_ONLY))]
    assert [(int(r["version"]), r["name"]) for r in recorded] == wanted
    assert len(wanted) == (1 if store.legacy else 2)
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
    await put(store, rows("job-1", range(1, 2501)))
    await put(store, rows("job-2", range(1, 11), stream="stderr", text="ERROR {seq}"))
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
    await put(store, rows("job-1", range(1, 4)))
    await put(store, rows("job-1", range(4, 5), last=True, stream="system", text="exit code 0"))
    assert await store.job_state("job-1") == (4, True)
    summary = await store.summary("job-1")
    assert summary is not None and summary.complete


async def test_dedup_helpers(store: LogStore) -> None:
    await put(store, rows("job-1", range(1, 101)))
    await put(store, rows("job-2", range(5, 8)))
    assert await store.max_seqs(["job-1", "job-2", "job-3"]) == {"job-1": 100, "job-2": 7}
    found = await store.existing({"job-1": (95, 120), "job-2": (1, 5)})
    assert found == {"job-1": {95, 96, 97, 98, 99, 100}, "job-2": {5}}


async def test_search_text_filters_and_limit(store: LogStore) -> None:
    await put(store, rows("job-a", range(1, 301), repo="acme/api", host="h1", text="compiling unit {seq}"))
    await put(store, rows("job-b", range(1, 4), repo="acme/web", host="h2", text="Fatal ERROR in step {seq}"))
    await put(store, rows("job-c", range(1, 3), repo="acme/web", host="h2", text="100% done_ok it's \\ok"))
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
    await put(store, rows("job-u", range(1, 3), text="Übersetzung FEHLGESCHLAGEN {seq}"))
    hits, _ = await store.search("übersetzung")
    assert len(hits) == 2


async def test_retention_sweep_drops_old_days(store: LogStore) -> None:
    old = NOW - 40 * 86400
    await put(store, rows("job-old", range(1, 6), ts=old))
    await put(store, rows("job-new", range(1, 6)))
    dropped = await store.sweep_retention()
    assert len(dropped) == 1
    assert await store.job_state("job-old") is None
    assert await store.job_state("job-new") == (5, False)


async def test_adapter_errors_are_ours(clickhouse: ClickHouse, database: str) -> None:
    from smith.errors import InvalidInput, UpstreamError

    await clickhouse.connect()
    with pytest.raises(UpstreamError):
        await clickhouse.select("SELEC nonsense")
    # Data the server cannot take is the data's fault (400 for the request that carried it), not a server error.
    await clickhouse.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    await clickhouse.execute(f"CREATE TABLE {database}.t (n UInt64) ENGINE = MergeTree ORDER BY n")
    try:
        with pytest.raises(InvalidInput, match="refused the data"):
            await clickhouse.insert(f"{database}.t", b'{"n": "twelve"}')
    finally:
        await clickhouse.execute(f"DROP DATABASE IF EXISTS {database}")


def test_literals_and_dialects() -> None:
    assert literal("a'b\\c\n") == "'a\\'b\\\\c\\n'"
    assert literal(5) == "5" and literal(True) == "1"
    assert like_contains("50%_x") == "'%50\\\\%\\\\_x%'"
    assert dialect_for_version("18.16.1") == LEGACY
    assert dialect_for_version("26.9.2.1") == MODERN
    assert dialect_for_version("22.3.1") == LEGACY  # no EPHEMERAL columns yet
    assert dialect_for_version("22.8.5.29") == MODERN


def test_the_dialect_settings_text_names_the_version_the_code_switches_at() -> None:
    import re

    from smith.logs.settings import LogsSettings

    text = LogsSettings.model_fields["clickhouse_dialect"].description or ""
    major, minor = (int(n) for n in re.findall(r"legacy \(< (\d+)\.(\d+)\)", text)[0])
    assert dialect_for_version(f"{major}.{minor}.1") == MODERN
    assert dialect_for_version(f"{major}.{minor - 1}.99" if minor else f"{major - 1}.99.1") == LEGACY


async def test_reads_hide_duplicates_not_yet_merged(store: LogStore) -> None:
    """Two writers may both store a line before ReplacingMergeTree merges: reads show it once."""
    await put(store, rows("job-d", range(1, 11)))
    await put(store, rows("job-d", range(5, 8)))
    assert [r.seq for r in await store.page("job-d", limit=100)] == list(range(1, 11))
    tail = await store.tail("job-d", limit=100)
    assert [r.seq for r in tail] == list(range(1, 11))
    summary = await store.summary("job-d")
    assert summary is not None and summary.lines == 10


async def test_search_shows_a_line_stored_twice_once(store: LogStore) -> None:
    """A retried insert stores lines again until ReplacingMergeTree merges: a search lists each (job_id, seq) once."""
    await put(store, rows("job-s", range(1, 6), text="flaky test {seq}"))
    await put(store, rows("job-s", range(3, 6), text="flaky test {seq}"))
    hits, limited = await store.search("flaky", since=NOW - 60)
    assert [h.seq for h in hits] == [5, 4, 3, 2, 1] and not limited
    hits, limited = await store.search("flaky", since=NOW - 60, limit=5)
    assert len(hits) == 5 and not limited


async def test_long_lists_of_job_ids_are_asked_in_bounded_queries(store: LogStore) -> None:
    """Thousands of long job ids in one IN list (or OR'd ranges) pass the server's max_query_size (256 KiB)."""
    many = [f"job-{i:05d}-" + "x" * 110 for i in range(3000)]  # ~370 KiB of ids
    await put(store, rows(many[1234], range(1, 4)) + rows(many[2999], range(1, 2)))
    assert await store.max_seqs(many) == {many[1234]: 3, many[2999]: 1}
    found = await store.existing(dict.fromkeys(many, (1, 2)))
    assert found == {many[1234]: {1, 2}, many[2999]: {1}}


async def test_stored_columns_are_the_same_whichever_encoding(store: LogStore) -> None:
    """Modern servers compute ts_us and day from the line's ts (migration 0002); legacy ones get them from us."""
    ts = float(int(NOW)) + 0.123456  # recent: older lines than the retention are dropped when parts merge (TTL)
    day = time.strftime("%Y-%m-%d", time.gmtime(ts + 0.002))
    lines = rows("job-ts", range(1, 3), ts=ts, stream="stderr", last=True)
    lines[0].stream = "stdout"  # the default: left out of a modern insert, filled by the column's DEFAULT
    lines[0].last = False
    await put(store, lines)
    got = await store.ch.select(
        f"SELECT seq, ts_us, toString(day) AS d, stream, host, last, truncated FROM {store.table} "
        "WHERE job_id = 'job-ts' ORDER BY seq"
    )
    assert [(int(r["seq"]), int(r["ts_us"]), r["d"], r["stream"], r["host"], int(r["last"])) for r in got] == [
        (1, ts_us(ts + 0.001), day, "stdout", "host-1", 0),
        (2, ts_us(ts + 0.002), day, "stderr", "host-1", 1),
    ]
    assert ts_us(ts + 0.001) == int(NOW) * 1_000_000 + 124_456


async def test_a_table_from_before_0002_migrates_in_place(clickhouse: ClickHouse, database: str) -> None:
    """A modern table made by 0001 alone (rows with every column) takes 0002 and keeps its lines."""
    await clickhouse.connect()
    if clickhouse.dialect == LEGACY:
        pytest.skip("0002 is for modern servers only")
    store = LogStore(clickhouse, database=database)
    await clickhouse.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    await clickhouse.execute(
        f"CREATE TABLE {database}.schema_migrations (version UInt32, name String, applied_at DateTime) "
        "ENGINE = MergeTree ORDER BY version"
    )
    v1, name1, sql1 = migrations()[0]
    for stmt in statements(sql1):
        await clickhouse.execute(string.Template(stmt).substitute(store._substitutions()))
    await clickhouse.insert(
        f"{database}.schema_migrations",
        f'{{"version":{v1},"name":"{name1}","applied_at":"2025-01-01 00:00:00"}}'.encode(),
    )
    old = rows("job-old", range(1, 4))
    await clickhouse.insert(f"{store.table} ({ROW_COLUMNS})", encode_rows(old))
    await store.start()
    assert [
        int(r["version"])
        for r in await clickhouse.select(f"SELECT version FROM {database}.schema_migrations ORDER BY version")
    ] == [
        1,
        2,
    ]
    await put(store, rows("job-old", range(4, 6)))
    page = await store.page("job-old")
    assert [r.seq for r in page] == [1, 2, 3, 4, 5]
    assert [round(r.ts, 3) for r in page] == [round(NOW + s / 1000, 3) for s in range(1, 6)]
    await clickhouse.execute(f"DROP DATABASE {database}")


async def test_fresh_parts_are_searched_without_the_index_and_merges_build_it(store: LogStore) -> None:
    """Inserts skip the n-gram index (most of their cost); a search still finds what they hold; a merge indexes."""
    if store.legacy:
        pytest.skip("legacy servers have no skip indexes")
    engine = (
        await store.ch.select(
            f"SELECT engine_full FROM system.tables WHERE database = {literal(store.db)} AND name = 'log_lines'"
        )
    )[0]["engine_full"]
    assert "merge_selector_base = 10" in engine and "ttl_only_drop_parts = 1" in engine
    assert "fsync_after_insert = 1" in engine  # an acknowledged line is on disk
    await put(store, rows("job-i", range(1, 2001), text="compile unit {seq}"))
    await put(store, rows("job-i", range(2001, 2003), text="Kernel PANIC at {seq}"))

    async def index_bytes(name: str) -> int:
        got = await store.ch.select(
            "SELECT data_uncompressed_bytes AS b FROM system.data_skipping_indices "
            f"WHERE database = {literal(store.db)} AND table = 'log_lines' AND name = {literal(name)}"
        )
        return int(got[0]["b"])

    assert await index_bytes("line_ngrams") == 0 and await index_bytes("ts_range") > 0
    hits, _ = await store.search("kernel panic")
    assert [h.seq for h in hits] == [2002, 2001]
    await store.ch.execute(f"OPTIMIZE TABLE {store.table} FINAL")
    assert await index_bytes("line_ngrams") > 0  # the merged part carries the n-gram index
    hits, _ = await store.search("kernel panic")
    assert [h.seq for h in hits] == [2002, 2001]
    assert (await store.search("no such text anywhere"))[0] == []


def test_read_records_have_the_fields_of_the_documented_model() -> None:
    from smith.logs.store import Record
    from smith.wire.logs import LogRecord

    assert list(Record.__struct_fields__) == list(LogRecord.model_fields)


async def test_a_server_that_refuses_the_tuning_still_serves(chdb_dir: Path, database: str) -> None:
    """Managed ClickHouse services may not let a user change table settings: that costs merges, not the pipeline."""
    from smith.adapters.chdb import ChdbClickHouse
    from smith.errors import UpstreamError

    class Strict(ChdbClickHouse):
        async def execute(self, sql: str) -> None:
            if "MODIFY SETTING" in sql:
                raise UpstreamError("ClickHouse: Code: 497. DB::Exception: Not enough privileges (ACCESS_DENIED)")
            await super().execute(sql)

    ch = Strict(chdb_dir)
    store = LogStore(ch, database=database)
    try:
        await store.start()
        await put(store, rows("job-s", range(1, 4)))
        assert [r.seq for r in await store.page("job-s")] == [1, 2, 3]
    finally:
        await ch.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()


def test_chdb_is_reached_only_through_the_typed_connect() -> None:
    """The chdb and chdb-core wheels both install ``chdb/__init__.py`` (typed or not, ``ChdbError`` a
    ``RuntimeError`` or not, by install order): no module imports chdb itself, so neither mypy nor the
    runtime depends on which file won."""
    import ast

    src = Path(__file__).parents[2] / "src" / "smith"
    importers = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "chdb" or n.startswith("chdb.") for n in names):
                importers.append(str(path.relative_to(src)))
    assert importers == []


async def test_volume_per_job_biggest_first(store: LogStore) -> None:
    await put(store, rows("vol-small", range(1, 4)))
    await put(store, rows("vol-big", range(1, 21), text="a longer line number {seq}"))
    await put(store, rows("vol-old", range(1, 100), ts=NOW - 7200))
    got = await store.volume(NOW - 60, limit=10)
    assert [j["job_id"] for j in got] == ["vol-big", "vol-small"]
    assert got[0]["lines"] == 20 and got[0]["bytes"] == sum(len(f"a longer line number {i}") for i in range(1, 21))
    assert got[1]["first_ts"] <= got[1]["last_ts"]
    assert [j["job_id"] for j in await store.volume(NOW - 60, limit=1)] == ["vol-big"]
