"""Table tuning that must not hurt a real server: settings applied one by one (a refused or read-only one skipped
with a warning), a retention change that does not rewrite the table, no force merge where it misbehaves, no fsync
where it means nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from smith.adapters.chdb import ChdbClickHouse
from smith.adapters.clickhouse import LEGACY, literal
from smith.errors import UpstreamError
from smith.logs.store import FORCE_MERGE, LOCAL_ONLY, TUNING, LogStore
from smith.ports import ClickHouse

from .test_store import put, rows


async def engine_of(store: LogStore) -> str:
    found = await store.ch.select(
        f"SELECT engine_full FROM system.tables WHERE database = {literal(store.db)} AND name = 'log_lines'"
    )
    return str(found[0]["engine_full"])


async def test_one_refused_and_one_read_only_setting_leave_the_others_applied(chdb_dir: Path, database: str) -> None:
    altered: list[str] = []

    class Picky(ChdbClickHouse):
        async def execute(self, sql: str) -> None:
            if "MODIFY SETTING" in sql:
                altered.append(sql)
                if "fsync_after_insert" in sql:
                    raise UpstreamError("ClickHouse: Code: 497. DB::Exception: Not enough privileges (ACCESS_DENIED)")
            await super().execute(sql)

        async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
            found = await super().select(sql, settings)
            if "merge_tree_settings" in sql:  # as a server whose profile constrains it (readonly = 1)
                found = [r | {"readonly": 1} if r["name"] == "merge_selector_base" else r for r in found]
            return found

    ch = Picky(chdb_dir)
    store = LogStore(ch, database=database)
    try:
        with capture_logs() as logs:
            await store.start()
        engine = await engine_of(store)
        assert "ttl_only_drop_parts = 1" in engine and "fsync_part_directory = 1" in engine
        assert "fsync_after_insert" not in engine and "merge_selector_base" not in engine
        assert not any("merge_selector_base" in sql for sql in altered)
        warned = sorted(e["setting"] for e in logs if e["log_level"] == "warning")
        assert warned == ["fsync_after_insert", "merge_selector_base"]
        await put(store, rows("job-t", range(1, 4)))
        assert [r.seq for r in await store.page("job-t")] == [1, 2, 3]
    finally:
        await ch.execute(f"DROP DATABASE IF EXISTS {database}")
        await ch.aclose()


async def test_a_retention_change_does_not_rewrite_the_table(clickhouse: ClickHouse, database: str) -> None:
    store = LogStore(clickhouse, database=database, retention_days=30)
    try:
        await store.start()
        if store.ch.dialect == LEGACY:
            pytest.skip("legacy servers have no TTL")
        await put(store, rows("job-r", range(1, 50)))
        await LogStore(clickhouse, database=database, retention_days=7).start()
        assert "toIntervalDay(7)" in await engine_of(store)
        mutations = await clickhouse.select(
            f"SELECT command FROM system.mutations WHERE database = {literal(database)} AND table = 'log_lines'"
        )
        assert mutations == []  # no MATERIALIZE TTL: no part rewritten
    finally:
        await clickhouse.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.mark.parametrize(
    ("version", "engine", "left_out"),
    [
        ("25.8.1.1", "ReplacingMergeTree ORDER BY (job_id, seq)", ()),
        ("22.8.5.29", "ReplacingMergeTree ORDER BY (job_id, seq)", ()),
        ("22.11.1.1", "ReplacingMergeTree ORDER BY (job_id, seq)", FORCE_MERGE),
        ("23.3.22.3", "ReplacingMergeTree ORDER BY (job_id, seq)", FORCE_MERGE),
        ("23.4.1.1", "ReplacingMergeTree ORDER BY (job_id, seq)", ()),
        ("24.8.1.1", "ReplicatedReplacingMergeTree('/t/{shard}', '{replica}') ORDER BY (job_id, seq)", LOCAL_ONLY),
        ("24.8.1.1", "SharedReplacingMergeTree('/t/{uuid}/{shard}', '{replica}') ORDER BY (job_id, seq)", LOCAL_ONLY),
    ],
)
def test_tuning_leaves_out_what_hurts_or_means_nothing(
    chdb_dir: Path, version: str, engine: str, left_out: tuple[str, ...]
) -> None:
    ch = ChdbClickHouse(chdb_dir)
    ch.version = version
    assert set(TUNING) - set(LogStore(ch).tuning(engine)) == set(left_out)
