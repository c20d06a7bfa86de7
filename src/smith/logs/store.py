"""The log store: one table in ClickHouse (server over HTTP, or chdb), its migrations, and every query.

Schema (``migrations/0001_logs.sql``): ``log_lines`` is a ReplacingMergeTree ordered by ``(job_id, seq)`` and
partitioned by day. A job's page or tail is one primary-key range read in key order; retention drops whole day
partitions (a TTL on modern servers, a sweep on legacy ones); text search uses an n-gram bloom-filter skip index on
``lower(line)`` where the server has skip indexes.

Migrations are SQL files applied in name order at start-up and recorded in ``schema_migrations``; ``${...}``
placeholders in them are filled per dialect (see ``_substitutions``). A file whose first line is
``-- smith: modern only`` is not applied (nor recorded) on a legacy server, so it applies once that server is
upgraded.

Writes: ``encode`` turns validated lines into the server's JSONEachRow (the wire shape on modern servers, which
compute ``ts_us`` and ``day`` themselves; every column on legacy ones) and ``insert`` stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
import string
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

import msgspec

from smith.adapters.clickhouse import LEGACY, identifier, like_contains, literal
from smith.errors import SmithError
from smith.logging import get_logger
from smith.logs.ingest import LINE_COLUMNS, ROW_COLUMNS, Line, encode_lines, encode_rows
from smith.ports import ClickHouse
from smith.wire.logs import JobSummary

log = get_logger("smith.logs.store")

TABLE = "log_lines"
COLUMNS = "job_id, seq, ts_us, stream, line, host, vm, step, repo, truncated, last"
MODERN_ONLY = "-- smith: modern only"
# Table settings applied (where the server knows them) at every start, like the TTL:
TUNING: dict[str, int] = {
    "ttl_only_drop_parts": 1,  # partitions are days and so is the TTL: drop whole parts, never rewrite them
    "merge_selector_base": 10,  # merge ~10 like-sized parts at once: each line is rewritten fewer times
    "min_age_to_force_merge_seconds": 3600,  # a partition idle for an hour is merged (and indexed) whole
    "min_age_to_force_merge_on_partition_only": 1,
    "fsync_after_insert": 1,  # an acknowledged line is on disk, not only in the page cache
    "fsync_part_directory": 1,
    # The last 1000 inserts' dedup tokens are kept: an insert sent again (a retry after a timeout, the same batch
    # on another pipeline replica) is dropped by the server (replicated engines keep their own window).
    "non_replicated_deduplication_window": 1000,
}
FORCE_MERGE = ("min_age_to_force_merge_seconds", "min_age_to_force_merge_on_partition_only")
# Local-disk durability; on Replicated*/Shared* tables durability is the replicas' and the object store's.
LOCAL_FSYNC = ("fsync_after_insert", "fsync_part_directory")
LOCAL_ONLY = (*LOCAL_FSYNC, "non_replicated_deduplication_window")
DEDUP_TOKEN = "insert_deduplication_token"
# Start-up DDL of several pipeline replicas runs one at a time: whoever creates this table holds the lock. A lock
# older than LOCK_STALE_SECONDS is taken to be a crashed replica's and dropped.
LOCK_TABLE = "schema_lock"
LOCK_STALE_SECONDS = 600
# Servers on which the age-based force merge misbehaves (merges assigned again and again, partitions merged
# while they still take inserts): it is left off there.
FORCE_MERGE_BROKEN = ((22, 11), (23, 3))
# Fresh parts skip the n-gram index (most of an insert's cost); merges build it. Searches read a part without it
# in full, and unmerged parts are small and recent, so a search costs about the same and ingestion about half.
INSERT_SETTINGS = {"exclude_materialize_skip_indexes_on_insert": "line_ngrams"}
# Most job ids named in one query (IN lists, OR'd ranges): 500 ids of 128 bytes and their SQL are ~100 KiB.
ID_CHUNK = 500
_TTL_RE = re.compile(r"TTL\s+day\s*\+\s*toIntervalDay\((\d+)\)")
_SETTING_RE = re.compile(r"(\w+)\s*=\s*([^,\s]+)")


class Record(msgspec.Struct):
    """A stored line as the read APIs return it: the fields of ``smith.wire.logs.LogRecord`` (which documents
    them), as a struct that costs a tenth of a pydantic model to make and to encode (a tail is 1,000 of them)."""

    job_id: str
    seq: int
    ts: float
    stream: str
    line: str
    host: str = ""
    vm: str = ""
    step: str = ""
    repo: str = ""
    truncated: bool = False
    last: bool = False


def record(row: Mapping[str, Any]) -> Record:
    """A stored row as the API shows it (64-bit integers may arrive quoted from old servers)."""
    return Record(
        job_id=row["job_id"],
        seq=int(row["seq"]),
        ts=int(row["ts_us"]) / 1e6,
        stream=row["stream"],
        line=row["line"],
        host=row["host"],
        vm=row["vm"],
        step=row["step"],
        repo=row["repo"],
        truncated=bool(int(row["truncated"])),
        last=bool(int(row["last"])),
    )


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql template)`` of every migration file, in order."""
    files = resources.files("smith.logs.migrations")
    found = []
    for entry in files.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def statements(sql: str) -> list[str]:
    """One migration file's statements: split on ``;`` at a line's end, comments dropped."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]


class LogStore:
    """Reads and writes job logs in ``database`` on ``ch``. ``start()`` connects and migrates."""

    def __init__(
        self,
        ch: ClickHouse,
        *,
        database: str = "smith",
        retention_days: int = 30,
        search_seconds: int = 30,
        cluster: str = "",
        lock_stale_seconds: float = LOCK_STALE_SECONDS,
    ) -> None:
        self.ch = ch
        # On a cluster every DDL runs ON CLUSTER and the tables are Replicated* (one shard, any number of replicas).
        self.on_cluster = f" ON CLUSTER {identifier(cluster)}" if cluster else ""
        self.lock_stale_seconds = lock_stale_seconds
        # Reads (search, page, tail, summary) carry max_execution_time: the server stops one on its own after this
        # long (TIMEOUT_EXCEEDED) even if nobody cancels it.
        self.search_settings: dict[str, str | int] = {"max_execution_time": search_seconds}
        self.db = identifier(database)
        self.table = f"{self.db}.{TABLE}"
        self.retention_days = retention_days
        self.insert_settings: dict[str, str] = {}
        self.dedup_tokens = False  # the server takes insert_deduplication_token

    @property
    def legacy(self) -> bool:
        return self.ch.dialect == LEGACY

    async def start(self) -> None:
        await self.ch.connect()
        applied = await self.migrate()
        if applied:
            log.info("migrations applied", applied=applied, dialect=self.ch.dialect, version=self.ch.version)
        if not self.legacy:
            rows = await self.ch.select(
                f"SELECT engine_full FROM system.tables WHERE database = {literal(self.db)} AND name = {literal(TABLE)}"
            )
            engine = rows[0]["engine_full"] if rows else ""
            await self._ensure_ttl(engine)
            await self._tune(engine)

    async def close(self) -> None:
        await self.ch.aclose()

    # -- schema -----------------------------------------------------------------------------------------

    def _engine(self, name: str, table: str) -> str:
        """``name`` (a MergeTree engine) as this deployment needs it: Replicated on a cluster."""
        if not self.on_cluster:
            return name
        return f"Replicated{name}('/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}')"

    def _substitutions(self) -> dict[str, str]:
        common = {
            "db": self.db,
            "on_cluster": self.on_cluster,
            "replacing_merge_tree": self._engine("ReplacingMergeTree", TABLE),
        }
        if self.legacy:
            return {**common, "lc_string": "String", "line_index": "", "ttl": ""}
        return {
            **common,
            "lc_string": "LowCardinality(String)",
            "line_index": ",\n    INDEX line_ngrams lower(line) TYPE ngrambf_v1(4, 65536, 2, 0) GRANULARITY 4",
            "ttl": f"TTL day + toIntervalDay({int(self.retention_days)})",
        }

    async def _ensure_database(self) -> None:
        """Create the database only if it is missing: a user granted only this database may not run CREATE
        DATABASE at all, not even with IF NOT EXISTS."""
        rows = await self.ch.select(f"SELECT count() AS n FROM system.databases WHERE name = {literal(self.db)}")
        if not rows or int(rows[0]["n"]) == 0:
            await self.ch.execute(f"CREATE DATABASE IF NOT EXISTS {self.db}{self.on_cluster}")

    @contextlib.asynccontextmanager
    async def _schema_lock(self) -> AsyncIterator[None]:
        """Hold the start-up DDL lock (a table only one replica can create) while the block runs."""
        lock = f"{self.db}.{LOCK_TABLE}"
        waited = 0.0
        while True:
            try:
                await self.ch.execute(f"CREATE TABLE {lock}{self.on_cluster} (at DateTime) ENGINE = Log")
                break
            except SmithError as exc:
                if "TABLE_ALREADY_EXISTS" not in exc.message and "Code: 57." not in exc.message:
                    raise
            rows = await self.ch.select(
                "SELECT dateDiff('second', metadata_modification_time, now()) AS age FROM system.tables "
                f"WHERE database = {literal(self.db)} AND name = {literal(LOCK_TABLE)}"
            )
            if rows and float(rows[0]["age"]) >= self.lock_stale_seconds:
                log.warning("dropping a stale schema lock (a replica died during start-up DDL?)", table=lock)
                await self.ch.execute(f"DROP TABLE IF EXISTS {lock}{self.on_cluster}")
                continue
            if waited == 0.0:
                log.info("another replica is migrating the log store; waiting", table=lock)
            await asyncio.sleep(0.2)
            waited += 0.2
        try:
            yield
        finally:
            await self.ch.execute(f"DROP TABLE IF EXISTS {lock}{self.on_cluster}")

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded; the names of those applied now. Replicas starting together
        take turns (``_schema_lock``), so each migration runs and is recorded once."""
        await self._ensure_database()
        await self.ch.execute(
            f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations{self.on_cluster} "
            "(version UInt32, name String, applied_at DateTime) "
            f"ENGINE = {self._engine('MergeTree', 'schema_migrations')} ORDER BY version"
        )
        async with self._schema_lock():
            done = {int(r["version"]) for r in await self.ch.select(f"SELECT version FROM {self.db}.schema_migrations")}
            applied = []
            subs = self._substitutions()
            for version, name, template in migrations():
                if version in done or (self.legacy and template.startswith(MODERN_ONLY)):
                    continue
                for stmt in statements(template):
                    await self.ch.execute(string.Template(stmt).substitute(subs))
                now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
                row = {"version": version, "name": name, "applied_at": now}
                await self.ch.insert(f"{self.db}.schema_migrations", _ndjson([row]))
                applied.append(name)
        return applied

    async def _ensure_ttl(self, engine: str) -> None:
        """Make the table's TTL the configured retention (``engine`` is its ``engine_full``)."""
        m = _TTL_RE.search(engine)
        if m and int(m.group(1)) == self.retention_days:
            return
        # Without materialize_ttl_after_modify=0 the server rewrites every part of the table to apply the new TTL;
        # with it, expired days still go (ttl_only_drop_parts drops whole parts as they expire; merges apply it).
        await self.ch.execute(
            f"ALTER TABLE {self.table}{self.on_cluster} MODIFY TTL day + toIntervalDay({int(self.retention_days)}) "
            "SETTINGS materialize_ttl_after_modify = 0"
        )
        log.info("retention changed", days=self.retention_days)

    def tuning(self, engine: str) -> dict[str, int]:
        """The part of ``TUNING`` for this server and table: no force merge where it misbehaves, no fsync where
        the engine is replicated or shared (it buys nothing there)."""
        parts = [int(p) for p in re.findall(r"\d+", self.ch.version)[:2]] + [0, 0]
        skip: tuple[str, ...] = ()
        if FORCE_MERGE_BROKEN[0] <= (parts[0], parts[1]) <= FORCE_MERGE_BROKEN[1]:
            skip += FORCE_MERGE
        if engine.startswith(("Replicated", "Shared")):
            skip += LOCAL_ONLY
        return {k: v for k, v in TUNING.items() if k not in skip}

    async def _tune(self, engine: str) -> None:
        """Apply ``tuning()`` one setting at a time, and pick ``INSERT_SETTINGS``, each only if this server has the
        setting (``engine`` is the table's ``engine_full``, whose SETTINGS say what is already set). A read-only
        or refused setting is skipped with a warning; the others still apply."""
        tuning = self.tuning(engine)
        names = ", ".join(literal(k) for k in tuning)
        rows = await self.ch.select(f"SELECT * FROM system.merge_tree_settings WHERE name IN ({names})")
        readonly = {r["name"] for r in rows if str(r.get("readonly", "0")) == "1"}
        known = {r["name"] for r in rows}
        current = dict(_SETTING_RE.findall(engine.partition(" SETTINGS ")[2]))
        for key, value in tuning.items():
            if key not in known or current.get(key) == str(value):
                continue
            if key in readonly:
                log.warning("table setting is read-only on this server; not applied", setting=key)
                continue
            try:
                await self.ch.execute(f"ALTER TABLE {self.table}{self.on_cluster} MODIFY SETTING {key} = {int(value)}")
            except SmithError as exc:  # e.g. a managed service that does not let users change it: still works
                log.warning("table setting not applied; ingestion works", setting=key, error=exc.message)
        names = ", ".join(literal(k) for k in (*INSERT_SETTINGS, DEDUP_TOKEN))
        rows = await self.ch.select(f"SELECT name FROM system.settings WHERE name IN ({names})")
        known = {r["name"] for r in rows}
        self.insert_settings = {k: v for k, v in INSERT_SETTINGS.items() if k in known}
        self.dedup_tokens = DEDUP_TOKEN in known

    async def sweep_retention(self, now: float | None = None) -> list[str]:
        """Drop day partitions older than the retention (what a TTL does on modern servers); their ids."""
        cutoff = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date() - dt.timedelta(
            days=self.retention_days
        )
        rows = await self.ch.select(
            f"SELECT partition, max(max_date) AS newest FROM system.parts WHERE database = {literal(self.db)} "
            f"AND table = {literal(TABLE)} AND active GROUP BY partition"
        )
        dropped = []
        for row in rows:
            if dt.date.fromisoformat(str(row["newest"])) < cutoff and str(row["partition"]).isdigit():
                await self.ch.execute(f"ALTER TABLE {self.table} DROP PARTITION {int(row['partition'])}")
                dropped.append(str(row["partition"]))
        return dropped

    # -- writes -----------------------------------------------------------------------------------------

    def encode(self, lines: list[Line]) -> bytes:
        """``lines`` as this server's JSONEachRow, for ``insert``."""
        return encode_rows(lines) if self.legacy else encode_lines(lines)

    async def insert(self, payload: bytes) -> None:
        """Lines ``encode`` made; durable when this returns. The insert carries a deduplication token made from
        its bytes, so the same payload inserted again (by this replica after a timeout, or by another replica
        that got the same request) is dropped by the server within its deduplication window."""
        columns = ROW_COLUMNS if self.legacy else LINE_COLUMNS
        settings = self.insert_settings
        if self.dedup_tokens:
            settings = {**settings, DEDUP_TOKEN: hashlib.blake2b(payload, digest_size=16).hexdigest()}
        await self.ch.insert(f"{self.table} ({columns})", payload, settings)

    async def max_seqs(self, job_ids: Iterable[str]) -> dict[str, int]:
        """The highest stored seq of each of these jobs that has any line."""
        found: dict[str, int] = {}
        for ids in _chunks(sorted(set(job_ids))):
            rows = await self.ch.select(
                f"SELECT job_id, max(seq) AS m FROM {self.table} "
                f"WHERE job_id IN ({', '.join(literal(j) for j in ids)}) GROUP BY job_id"
            )
            found |= {r["job_id"]: int(r["m"]) for r in rows}
        return found

    async def existing(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, set[int]]:
        """Which seqs in ``{job_id: (lo, hi)}`` are already stored."""
        found: dict[str, set[int]] = {}
        for jobs in _chunks(sorted(ranges)):
            cond = " OR ".join(
                f"(job_id = {literal(j)} AND seq BETWEEN {int(ranges[j][0])} AND {int(ranges[j][1])})" for j in jobs
            )
            for r in await self.ch.select(f"SELECT job_id, seq FROM {self.table} WHERE {cond}"):
                found.setdefault(r["job_id"], set()).add(int(r["seq"]))
        return found

    # -- reads ------------------------------------------------------------------------------------------

    async def job_state(self, job_id: str) -> tuple[int, bool] | None:
        """``(max seq, complete)`` of a job, or None if it has no line."""
        rows = await self.ch.select(
            f"SELECT count() AS n, max(seq) AS m, max(last) AS done FROM {self.table} WHERE job_id = {literal(job_id)}"
        )
        if not rows or int(rows[0]["n"]) == 0:
            return None
        return int(rows[0]["m"]), bool(int(rows[0]["done"]))

    async def page(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[Record]:
        """Up to ``limit`` lines with seq above ``after``, in order."""
        rows = await self.ch.select(
            f"SELECT {COLUMNS} FROM {self.table} WHERE job_id = {literal(job_id)} AND seq > {int(after)} "
            f"ORDER BY seq LIMIT {int(limit)}",
            self.search_settings,
        )
        return _unique(rows)

    async def tail(self, job_id: str, *, limit: int = 1000) -> list[Record]:
        """The last ``limit`` lines, in order."""
        rows = await self.ch.select(
            f"SELECT {COLUMNS} FROM {self.table} WHERE job_id = {literal(job_id)} ORDER BY seq DESC LIMIT {int(limit)}",
            self.search_settings,
        )
        return _unique(list(reversed(rows)))

    async def search(
        self,
        text: str = "",
        *,
        since: float | None = None,
        until: float | None = None,
        repo: str | None = None,
        host: str | None = None,
        job_id: str | None = None,
        limit: int = 100,
    ) -> tuple[list[Record], bool]:
        """Lines containing ``text`` (any case), newest first, each (job_id, seq) once, and whether more than
        ``limit`` matched. Runs under ``search_settings`` (the server gives up after max_execution_time)."""
        where = []
        if text:
            if text.isascii():
                # lower() is ASCII-only in ClickHouse; the skip index is on lower(line).
                where.append(f"lower(line) LIKE {like_contains(text.lower())}")
            else:
                where.append(f"positionCaseInsensitiveUTF8(line, {literal(text)}) > 0")
        if since is not None:
            where.append(f"ts_us >= {int(since * 1e6)}")
            where.append(f"day >= {literal(_day(since))}")
        if until is not None:
            where.append(f"ts_us < {int(until * 1e6)}")
            where.append(f"day <= {literal(_day(until))}")
        if repo:
            where.append(f"repo = {literal(repo)}")
        if host:
            where.append(f"host = {literal(host)}")
        if job_id:
            where.append(f"job_id = {literal(job_id)}")
        clause = " AND ".join(where) or "1"
        # A line stored twice (a retried insert, before the ReplacingMergeTree merged it away) is shown once.
        rows = await self.ch.select(
            f"SELECT {COLUMNS} FROM {self.table} WHERE {clause} ORDER BY ts_us DESC, job_id, seq "
            f"LIMIT 1 BY job_id, seq LIMIT {int(limit) + 1}",
            self.search_settings,
        )
        return [record(r) for r in rows[:limit]], len(rows) > limit

    async def volume(self, since: float, limit: int = 20) -> list[dict[str, Any]]:
        """The jobs with the most log bytes since ``since`` (epoch seconds): lines, bytes, first and last line
        time. A line stored twice (a resend not yet merged away) counts twice: this is a report, not an audit."""
        rows = await self.ch.select(
            "SELECT job_id, count() AS n, sum(length(line)) AS bytes, min(ts_us) AS first, max(ts_us) AS last_us "
            f"FROM {self.table} WHERE ts_us >= {int(since * 1e6)} "
            f"GROUP BY job_id ORDER BY bytes DESC, job_id LIMIT {int(limit)}",
            self.search_settings,
        )
        return [
            {
                "job_id": r["job_id"],
                "lines": int(r["n"]),
                "bytes": int(r["bytes"]),
                "first_ts": int(r["first"]) / 1e6,
                "last_ts": int(r["last_us"]) / 1e6,
            }
            for r in rows
        ]

    async def summary(self, job_id: str) -> JobSummary | None:
        rows = await self.ch.select(
            "SELECT count() AS n, sum(length(line)) AS bytes, min(ts_us) AS first, max(ts_us) AS last_us, "
            "countIf(stream = 'stderr' OR positionCaseInsensitive(line, 'error') > 0) AS errors, "
            "countIf(stream = 'stderr') AS stderr, sum(truncated) AS trunc, max(last) AS done, max(seq) AS m "
            f"FROM (SELECT seq, ts_us, stream, line, truncated, last FROM {self.table} "
            f"WHERE job_id = {literal(job_id)} ORDER BY seq LIMIT 1 BY seq)",
            self.search_settings,
        )
        if not rows or int(rows[0]["n"]) == 0:
            return None
        r = rows[0]
        return JobSummary(
            job_id=job_id,
            lines=int(r["n"]),
            bytes=int(r["bytes"]),
            first_ts=int(r["first"]) / 1e6,
            last_ts=int(r["last_us"]) / 1e6,
            error_lines=int(r["errors"]),
            stderr_lines=int(r["stderr"]),
            truncated_lines=int(r["trunc"]),
            complete=bool(int(r["done"])),
            last_seq=int(r["m"]),
        )


def _unique(rows: list[dict[str, Any]]) -> list[Record]:
    """Records of rows ordered by seq, each seq once: a duplicate not yet merged away is skipped.

    (Done here rather than with ``LIMIT 1 BY seq``, which stops ClickHouse reading in key order: 4x slower tails.)
    """
    out: list[Record] = []
    last = None
    for r in rows:
        seq = int(r["seq"])
        if seq != last:
            out.append(record(r))
            last = seq
    return out


def _chunks(items: list[str]) -> Iterator[list[str]]:
    """``items`` in lists short enough that a query naming each (ids up to 128 bytes) stays far below the
    server's max_query_size (256 KiB by default)."""
    for i in range(0, len(items), ID_CHUNK):
        yield items[i : i + ID_CHUNK]


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(max(ts, 0), dt.UTC).date().isoformat()


def _ndjson(rows: Iterable[Mapping[str, Any]]) -> bytes:
    import orjson

    return b"\n".join(orjson.dumps(dict(r)) for r in rows)
