"""A ClickHouse server over its HTTP interface, with httpx.

Works with current servers and with old ones such as Debian's 18.16 (the ``legacy`` dialect): credentials go in
``X-ClickHouse-User`` / ``X-ClickHouse-Key`` headers, queries in the POST body, inserts as
``INSERT ... FORMAT JSONEachRow`` with the rows as the body. Transport failures become ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from smith.adapters.clickhouse import DIALECTS, MODERN, dialect_for_version, query_error
from smith.errors import ConfigError, Unavailable


class HttpClickHouse:
    """``ClickHouse`` port over HTTP. ``dialect="auto"`` picks by the server's version."""

    def __init__(
        self,
        url: str,
        *,
        user: str = "default",
        password: str = "",
        dialect: str = "auto",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if dialect != "auto" and dialect not in DIALECTS:
            raise ConfigError(f"unknown ClickHouse dialect {dialect!r} (auto, {', '.join(DIALECTS)})")
        self.url = url.rstrip("/")
        self._wanted = dialect
        self.dialect = MODERN if dialect == "auto" else dialect
        self.version = ""
        headers = {"X-ClickHouse-User": user}
        if password:
            headers["X-ClickHouse-Key"] = password
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    async def connect(self) -> None:
        rows = await self.select("SELECT version() AS v")
        self.version = str(rows[0]["v"])
        if self._wanted == "auto":
            self.dialect = dialect_for_version(self.version)

    async def _post(self, content: bytes, params: dict[str, str] | None = None) -> bytes:
        try:
            resp = await self._client.post("/", content=content, params=params)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach ClickHouse at {self.url}: {exc!r}", retry_after=1.0) from exc
        if resp.status_code >= 400:
            raise query_error(resp.text, status=resp.status_code)
        return resp.content

    async def execute(self, sql: str) -> None:
        await self._post(sql.encode())

    async def select(self, sql: str) -> list[dict[str, Any]]:
        data = await self._post((sql + "\nFORMAT JSONEachRow").encode())
        return [orjson.loads(line) for line in data.splitlines() if line]

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        if rows:
            params = {key: str(value) for key, value in (settings or {}).items()}  # settings as URL parameters
            params["query"] = f"INSERT INTO {table} FORMAT JSONEachRow"
            await self._post(rows, params=params)

    async def aclose(self) -> None:
        await self._client.aclose()
