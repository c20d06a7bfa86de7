"""ClickHouse in-process through chdb, kept in a directory (the embedded default of ``smith dev``).

chdb runs one embedded server per process, bound to one data directory: opening a second directory while the
first is open is refused (``ConfigError``). Every call goes through one worker thread, so queries are serialized
(chdb's engine parallelises each query itself and releases the GIL while it runs).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from smith.adapters.clickhouse import MODERN, dialect_for_version, query_error
from smith.errors import ConfigError, SmithError

_lock = threading.Lock()
_open: dict[str, Any] = {}  # {"path": str, "session": Session, "users": int}


def _acquire(path: Path) -> Any:
    from chdb import session as chdb_session

    with _lock:
        if _open:
            if _open["path"] != str(path):
                raise ConfigError(
                    f"chdb is already open on {_open['path']} in this process; it cannot also open {path}"
                )
            _open["users"] += 1
            return _open["session"]
        path.mkdir(parents=True, exist_ok=True)
        try:
            sess = chdb_session.Session(str(path))  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ConfigError(f"cannot open chdb in {path}: {exc}") from exc
        _open.update(path=str(path), session=sess, users=1)
        return sess


def _release() -> None:
    with _lock:
        if not _open:
            return
        _open["users"] -= 1
        if _open["users"] <= 0:
            sess = _open["session"]
            _open.clear()
            sess.close()


class ChdbClickHouse:
    """``ClickHouse`` port over chdb in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.dialect = MODERN
        self.version = ""
        self._session: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")

    async def connect(self) -> None:
        if self._session is None:
            self._session = _acquire(self.path)
        rows = await self.select("SELECT version() AS v")
        self.version = str(rows[0]["v"])
        self.dialect = dialect_for_version(self.version)

    def _run(self, sql: str, fmt: str) -> bytes:
        if self._session is None:
            raise ConfigError("chdb store is not open (call connect first)")
        try:
            result = self._session.query(sql, fmt)
        except RuntimeError as exc:
            raise query_error(str(exc)) from exc
        data: bytes = result.bytes()
        return data

    async def _call(self, sql: str, fmt: str = "JSONEachRow") -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, sql, fmt)
        except SmithError:
            raise
        except RuntimeError as exc:  # e.g. the pool was shut down
            raise query_error(str(exc)) from exc

    async def execute(self, sql: str) -> None:
        await self._call(sql)

    async def select(self, sql: str) -> list[dict[str, Any]]:
        data = await self._call(sql)
        return [orjson.loads(line) for line in data.splitlines() if line]

    async def insert(self, table: str, rows: bytes) -> None:
        if not rows:
            return
        await self._call(f"INSERT INTO {table} FORMAT JSONEachRow\n" + rows.decode())

    async def aclose(self) -> None:
        if self._session is not None:
            self._session = None
            await asyncio.get_running_loop().run_in_executor(self._pool, _release)
        self._pool.shutdown(wait=True)
