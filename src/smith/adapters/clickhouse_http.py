"""A ClickHouse server over its HTTP interface, with httpx.

Works with current servers and with old ones such as Debian's 18.16 (the ``legacy`` dialect): credentials go in
``X-ClickHouse-User`` / ``X-ClickHouse-Key`` headers, queries in the POST body, inserts as
``INSERT ... FORMAT JSONEachRow`` with the rows as the body. Transport failures become ``Unavailable``.

A query failed if the status is 400 or more, *or* the answer carries ``X-ClickHouse-Exception-Code`` (23.x-24.8
answer 200 with it when reading an insert's body times out), *or* the body ends with an exception the server
wrote after it had started streaming a 200 (``Code: N. DB::Exception`` as a last line; ``__exception__`` blocks on
25.x). Inserts also ask the server to answer only at the end (``wait_end_of_query=1``, no progress headers) and,
on modern servers, to store before answering (``async_insert=0``), whatever the user's profile says; their bodies
go gzip-compressed (``Content-Encoding: gzip``, level 1).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from smith.adapters.clickhouse import (
    DIALECTS,
    LEGACY,
    MODERN,
    dialect_for_version,
    error_code,
    literal,
    query_error,
)
from smith.errors import ConfigError, SmithError, Unavailable
from smith.logging import get_logger

log = get_logger("smith.adapters.clickhouse_http")

# Settings every insert carries so that "200" means "stored": the answer waits for the end of the query and no
# progress headers are sent early (which would fix the status at 200 before the insert ran).
INSERT_PARAMS = {"wait_end_of_query": "1", "send_progress_in_http_headers": "0"}
# ... and on servers that have asynchronous inserts (21.11+), the insert is not buffered and acknowledged early
# (and if a profile constraint forbids turning async_insert off, it is acknowledged only once flushed).
MODERN_INSERT_PARAMS = {"async_insert": "0", "wait_for_async_insert": "1"}
# Settings a server may refuse to let a user change (a profile constraint, readonly mode): dropped then, in order.
_DROPPABLE = ("async_insert", "send_progress_in_http_headers", "wait_for_async_insert")
_REFUSED_SETTING_CODES = {164, 452}  # READONLY, SETTING_CONSTRAINT_VIOLATION
_TRAILING_EXCEPTION = re.compile(rb"(?:^|\n)Code: \d+\. DB::Exception[^\n]*\s*$")
_TAIL = 64 * 1024


def body_exception(body: bytes) -> str | None:
    """The exception a server wrote at the end of a 200 body it had started streaming, if any."""
    tail = body[-_TAIL:]
    if tail.rstrip().endswith(b"__exception__"):
        block = tail[tail.find(b"__exception__") :].decode(errors="replace")
        return block[block.find("Code:") :].strip() if "Code:" in block else "exception in the body"
    m = _TRAILING_EXCEPTION.search(tail)
    return m.group(0).decode(errors="replace").strip() if m else None


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
        self._refused: set[str] = set()
        self._kills: set[asyncio.Task[None]] = set()  # KILL QUERY requests in flight (kept from garbage collection)
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

    async def _post(
        self, content: bytes, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> bytes:
        try:
            resp = await self._client.post("/", content=content, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach ClickHouse at {self.url}: {exc!r}", retry_after=1.0) from exc
        if resp.status_code >= 400 or "x-clickhouse-exception-code" in resp.headers:
            code = resp.headers.get("x-clickhouse-exception-code", "")
            text = resp.text if "Code:" in resp.text or not code else f"Code: {code}. {resp.text}"
            raise query_error(text, status=resp.status_code)
        found = body_exception(resp.content)
        if found is not None:
            raise query_error(found, status=resp.status_code)
        return resp.content

    async def execute(self, sql: str) -> None:
        await self._post(sql.encode())

    async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
        """Rows of ``sql``; ``settings`` go as URL parameters. The query has its own ``query_id``: if this call is
        cancelled (the caller gave up), the server is told to stop it (``KILL QUERY``) rather than run it out."""
        params = {key: str(value) for key, value in (settings or {}).items()}
        params["query_id"] = query_id = f"smith-{uuid.uuid4().hex}"
        try:
            data = await self._post((sql + "\nFORMAT JSONEachRow").encode(), params=params)
        except asyncio.CancelledError:
            self._kills.add(asyncio.create_task(self._kill(query_id)))
            raise
        return [orjson.loads(line) for line in data.splitlines() if line]

    async def _kill(self, query_id: str) -> None:
        try:
            await self._post(f"KILL QUERY WHERE query_id = {literal(query_id)} ASYNC".encode())
        except SmithError as exc:
            log.warning("could not stop an abandoned ClickHouse query", query_id=query_id, error=exc.message)
        finally:
            self._kills.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        if rows:
            params = {key: str(value) for key, value in (settings or {}).items()}  # settings as URL parameters
            params |= INSERT_PARAMS if self.dialect == LEGACY else INSERT_PARAMS | MODERN_INSERT_PARAMS
            params["query"] = f"INSERT INTO {table} FORMAT JSONEachRow"
            body = gzip.compress(rows, 1)
            while True:
                sent = {k: v for k, v in params.items() if k not in self._refused}
                try:
                    await self._post(body, params=sent, headers={"Content-Encoding": "gzip"})
                    return
                except SmithError as exc:
                    if not self._drop_refused(exc.message, sent):
                        raise

    def _drop_refused(self, message: str, sent: Mapping[str, str]) -> bool:
        """If ``message`` says the server will not let us change one of our insert settings, stop sending it
        (one warning) and say so; the insert is then retried."""
        if error_code(message) not in _REFUSED_SETTING_CODES:
            return False
        for name in _DROPPABLE:
            if name in sent and name in message:
                self._refused.add(name)
                log.warning("ClickHouse refuses this insert setting; sending inserts without it", setting=name)
                return True
        return False

    async def aclose(self) -> None:
        if self._kills:
            await asyncio.gather(*self._kills, return_exceptions=True)
        await self._client.aclose()
