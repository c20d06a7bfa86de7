"""Several pipeline replicas on one ClickHouse (issue 15, items 9 and 12): start-up DDL one replica at a time, a
database the user may not create, a cluster's DDL, and what "exactly once" holds when the same lines reach two
replicas at once.

Two replicas here are two ``LogStore``/``Batcher`` pairs on one chdb engine, as two pipeline processes share one
server. No ClickHouse cluster (Keeper and several servers) can run here: the cluster test records the DDL a
cluster gets and runs it with the cluster parts taken out.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from smith.adapters.chdb import ChdbClickHouse
from smith.errors import UpstreamError
from smith.logs.batcher import Batcher
from smith.logs.store import LOCK_TABLE, TUNING, LogStore, migrations

from .test_store import rows


@pytest.fixture
async def chdb(chdb_dir: Path, database: str) -> AsyncIterator[ChdbClickHouse]:
    ch = ChdbClickHouse(chdb_dir)
    await ch.connect()
    yield ch
    await ch.execute(f"DROP DATABASE IF EXISTS {database}")
    await ch.aclose()


async def raw_count(ch: ChdbClickHouse, database: str, job: str) -> int:
    """Rows stored for ``job``, duplicates included (no FINAL, no folding)."""
    found = await ch.select(f"SELECT count() AS n FROM {database}.log_lines WHERE job_id = '{job}'")
    return int(found[0]["n"])


async def test_replicas_starting_together_migrate_once(chdb: ChdbClickHouse, database: str) -> None:
    stores = [LogStore(chdb, database=database) for _ in range(3)]
    applied = await asyncio.gather(*(s.migrate() for s in stores))
    assert sorted(name for names in applied for name in names) == sorted(n for _, n, _ in migrations())
    recorded = await chdb.select(f"SELECT version FROM {database}.schema_migrations ORDER BY version")
    assert [int(r["version"]) for r in recorded] == [v for v, _, _ in migrations()]
    tables = await chdb.select(f"SELECT name FROM system.tables WHERE database = '{database}'")
    assert LOCK_TABLE not in {t["name"] for t in tables}  # released


async def test_a_stale_lock_of_a_crashed_replica_is_dropped(chdb: ChdbClickHouse, database: str) -> None:
    await chdb.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    await chdb.execute(f"CREATE TABLE {database}.{LOCK_TABLE} (at DateTime) ENGINE = Log")  # never released
    store = LogStore(chdb, database=database, lock_stale_seconds=0)
    with capture_logs() as logs:
        await asyncio.wait_for(store.start(), 30)
    assert any("stale schema lock" in e["event"] for e in logs)
    await chdb.execute(f"CREATE TABLE {database}.{LOCK_TABLE} (at DateTime) ENGINE = Log")
    waiting = LogStore(chdb, database=database)  # a live lock (just made) is waited for, not dropped
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiting.migrate(), 1.0)


async def test_a_user_granted_only_the_database_can_start(chdb_dir: Path, database: str) -> None:
    """A user with rights on its database only: CREATE DATABASE (even IF NOT EXISTS) is refused; the database
    exists, so start-up must not ask."""

    class Granted(ChdbClickHouse):
        async def execute(self, sql: str) -> None:
            if sql.startswith("CREATE DATABASE"):
                raise UpstreamError("ClickHouse: Code: 497. DB::Exception: Not enough privileges. (ACCESS_DENIED)")
            await super().execute(sql)

    admin = ChdbClickHouse(chdb_dir)
    await admin.connect()
    await admin.execute(f"CREATE DATABASE {database}")
    ch = Granted(chdb_dir)
    try:
        store = LogStore(ch, database=database)
        await store.start()
        await store.insert(store.encode(rows("job-g", range(1, 3))))
        assert [r.seq for r in await store.page("job-g")] == [1, 2]
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()
        await admin.aclose()


async def test_on_a_cluster_every_ddl_runs_on_cluster_with_replicated_engines(chdb_dir: Path, database: str) -> None:
    ddl: list[str] = []

    class Cluster(ChdbClickHouse):
        """Records what a cluster is sent; runs it on the one engine here with the cluster parts taken out."""

        async def execute(self, sql: str) -> None:
            if re.match(r"\s*(CREATE|ALTER|DROP)\b", sql):
                ddl.append(sql)
            local = sql.replace(" ON CLUSTER ci_cluster", "")
            local = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'\)", r"\1", local)
            await super().execute(local)

        async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
            found = await super().select(sql, settings)
            if "engine_full FROM system.tables" in sql:  # as a cluster's table reads
                found = [r | {"engine_full": "Replicated" + r["engine_full"]} for r in found]
            return found

    ch = Cluster(chdb_dir)
    try:
        store = LogStore(ch, database=database, cluster="ci_cluster")
        await store.start()
        assert ddl and all(" ON CLUSTER ci_cluster" in sql for sql in ddl), [s for s in ddl if "ON CLUSTER" not in s]
        creates = [sql for sql in ddl if sql.startswith("CREATE TABLE IF NOT EXISTS")]
        assert len(creates) == 2
        assert all("ENGINE = Replicated" in sql and "{replica}" in sql for sql in creates)
        assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/log_lines'" in creates[-1]
        # no local-disk settings on a replicated table (fsync, the non-replicated dedup window)
        assert not any("fsync" in sql or "non_replicated_deduplication_window" in sql for sql in ddl)
        await store.insert(store.encode(rows("job-c", range(1, 3))))
        assert [r.seq for r in await store.page("job-c")] == [1, 2]
    finally:
        await ch.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()


async def test_the_same_lines_at_two_replicas_at_once_are_stored_once(chdb: ChdbClickHouse, database: str) -> None:
    """An agent's retry after a timeout reaches another replica while the first still writes: both check the
    store before either wrote, both insert. The insert's deduplication token (a hash of its bytes) makes the
    server keep one copy."""
    a, b = LogStore(chdb, database=database), LogStore(chdb, database=database)
    await a.start()
    await b.start()
    assert a.dedup_tokens and TUNING["non_replicated_deduplication_window"] > 0
    lines = rows("job-twice", range(1, 501))
    async with Batcher(a, min_rows=1, delay=0.0) as ba, Batcher(b, min_rows=1, delay=0.0) as bb:
        got = await asyncio.gather(ba.submit(lines), bb.submit(lines))
    assert got == [(500, 0), (500, 0)]  # each replica believed it wrote them
    assert await raw_count(chdb, database, "job-twice") == 500  # the server kept one copy
    assert [r.seq for r in await a.page("job-twice", limit=1000)] == list(range(1, 501))


async def test_different_batches_of_the_same_lines_are_folded_on_read(chdb: ChdbClickHouse, database: str) -> None:
    """What holds when two replicas write the same lines in different batches (each with other lines too): the
    table may hold a second copy until a merge folds it, and every read returns each (job, seq) once."""
    a, b = LogStore(chdb, database=database), LogStore(chdb, database=database)
    await a.start()
    await b.start()
    shared = rows("job-fold", range(1, 101))
    await a.insert(a.encode(shared + rows("job-only-a", range(1, 3))))
    await b.insert(b.encode(shared + rows("job-only-b", range(1, 3))))
    assert await raw_count(chdb, database, "job-fold") == 200
    assert [r.seq for r in await a.page("job-fold", limit=1000)] == list(range(1, 101))
    assert [r.seq for r in await a.tail("job-fold", limit=1000)] == list(range(1, 101))
    found, more = await a.search("line", job_id="job-fold", limit=1000)
    assert len(found) == 100 and not more
    summary = await a.summary("job-fold")
    assert summary is not None and summary.lines == 100
