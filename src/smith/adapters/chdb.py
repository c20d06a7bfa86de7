"""ClickHouse in-process through chdb, kept in a directory (the embedded default of ``smith dev``).

chdb runs one embedded server per process, bound to one data directory: opening a second directory while the
first is open is refused (``ConfigError``). The adapter keeps that server open while it is in use and talks to
it through ``workers`` threads, each with its own connection, so an insert and a read (or two inserts) run side
by side; chdb releases the GIL while a query runs. Inserts stream the JSONEachRow bytes into the engine
(``send_insert``) rather than pasting them into the SQL text.

chdb comes as two wheels, ``chdb`` (a wrapper) and ``chdb-core`` (the engine), and both install
``chdb/__init__.py`` with different contents: which one is on disk depends on install order. The wrapper's
``connect`` is untyped and its ``ChdbError`` is a plain ``Exception``; the engine's ``connect`` is typed and its
``ChdbError`` (``chdb._exceptions``) a ``RuntimeError``. So nothing here relies on that file: :func:`connect` reaches
chdb through ``importlib`` (mypy never reads chdb's own typing) and returns the :class:`Connection` protocol, which
names only what both layouts share (``connect``, and the engine's ``Connection.query``/``send_insert``/``close``,
which are the same file either way and raise the engine's ``RuntimeError``-based ``ChdbError``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from smith.adapters.clickhouse import MODERN, dialect_for_version, query_error, settings_clause
from smith.errors import ConfigError, SmithError


class Result(Protocol):
    def bytes(self) -> bytes: ...


class Inserter(Protocol):
    def __enter__(self) -> Inserter: ...
    def __exit__(self, *exc: object) -> None: ...
    def append(self, data: bytes) -> object: ...
    def finish(self) -> object: ...


class Connection(Protocol):
    """The part of chdb's ``Connection`` used here (the engine's ``chdb/state/sqlitelike.py``)."""

    def query(self, sql: str, fmt: str = "CSV") -> Result: ...
    def send_insert(self, sql: str, fmt: str) -> Inserter: ...
    def close(self) -> None: ...


def connect(path: Path) -> Connection:
    """A connection to chdb's embedded server on ``path``, whichever ``chdb/__init__.py`` is installed.
    Raises ``RuntimeError`` (the engine's ``ChdbError``) when the engine refuses."""
    module = importlib.import_module("chdb")
    return cast(Connection, module.connect(str(path)))


_lock = threading.Lock()
_open: dict[str, Any] = {}  # {"path": str, "conn": Connection, "users": int}


def _acquire(path: Path) -> None:
    """Start (or join) the process's embedded server on ``path``."""
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
            conn = connect(path)
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
        self._conns: list[Connection] = []
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chdb")

    async def connect(self) -> None:
        if not self._acquired:
            _acquire(self.path)
            self._acquired = True
        rows = await self.select("SELECT version() AS v")
        self.version = str(rows[0]["v"])
        self.dialect = dialect_for_version(self.version)

    def _conn(self) -> Connection:
        """This worker thread's own connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self._acquired:
                raise ConfigError("chdb store is not open (call connect first)")
            conn = self._local.conn = connect(self.path)
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

    async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
        sql += settings_clause(settings)
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
