"""ClickHouse in-process through chdb, kept in a directory (the embedded default of ``smith dev``).

chdb runs one embedded server per process, bound to one data directory: opening a second directory while the
first is open is refused (``ConfigError``). The adapter keeps that server open while it is in use and talks to
it through ``workers`` threads, each with its own connection, so an insert and a read (or two inserts) run side
by side; chdb releases the GIL while a query runs. Inserts stream the JSONEachRow bytes into the engine
(``send_insert``) rather than pasting them into the SQL text.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from smith.adapters.clickhouse import MODERN, dialect_for_version, query_error, settings_clause
from smith.errors import ConfigError, SmithError

_lock = threading.Lock()
_open: dict[str, Any] = {}  # {"path": str, "conn": Connection, "users": int}


def _acquire(path: Path) -> None:
    """Start (or join) the process's embedded server on ``path``."""
    import chdb

    with _lock:
        if _open:
            if _open["path"] != str(path):
                raise ConfigError(
                    f"chdb is already open on {_open['path']} in this process; it cannot also open {path}"
                )
            _open["users"] += 1
            return
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)  # chdb makes its files world-readable: only the service's user may enter
        try:
            conn = chdb.connect(str(path))  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ConfigError(f"cannot open chdb in {path}: {exc}") from exc
        _open.update(path=str(path), conn=conn, users=1)


def _release() -> None:
    with _lock:
        if not _open:
            return
        _open["users"] -= 1
        if _open["users"] <= 0:
            conn = _open["conn"]
            _open.clear()
            conn.close()


class ChdbClickHouse:
    """``ClickHouse`` port over chdb in ``path``."""

    def __init__(self, path: Path, *, workers: int = 3) -> None:
        self.path = Path(path)
        self.dialect = MODERN
        self.version = ""
        self._acquired = False
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chdb")

    async def connect(self) -> None:
        if not self._acquired:
            _acquire(self.path)
            self._acquired = True
        rows = await self.select("SELECT version() AS v")
        self.version = str(rows[0]["v"])
        self.dialect = dialect_for_version(self.version)

    def _conn(self) -> Any:
        """This worker thread's own connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self._acquired:
                raise ConfigError("chdb store is not open (call connect first)")
            import chdb

            conn = self._local.conn = chdb.connect(str(self.path))  # type: ignore[no-untyped-call]
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _query(self, sql: str, fmt: str) -> bytes:
        try:
            data: bytes = self._conn().query(sql, fmt).bytes()
        except RuntimeError as exc:  # (chdb's ChdbError is one)
            raise query_error(str(exc)) from exc
        return data

    def _insert(self, table: str, rows: bytes, settings: str) -> None:
        try:
            with self._conn().send_insert(f"INSERT INTO {table}{settings}", "JSONEachRow") as stream:
                stream.append(rows)
                stream.finish()  # (leaving the block without it cancels the insert)
        except RuntimeError as exc:
            raise query_error(str(exc)) from exc

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except SmithError:
            raise
        except RuntimeError as exc:  # e.g. the pool was shut down
            raise query_error(str(exc)) from exc

    async def execute(self, sql: str) -> None:
        await self._call(self._query, sql, "JSONEachRow")

    async def select(self, sql: str) -> list[dict[str, Any]]:
        data: bytes = await self._call(self._query, sql, "JSONEachRow")
        return [orjson.loads(line) for line in data.splitlines() if line]

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        if rows:
            await self._call(self._insert, table, rows, settings_clause(settings))

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._pool.shutdown, True)
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self._acquired:
            self._acquired = False
            _release()
