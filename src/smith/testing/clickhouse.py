"""ClickHouse's HTTP interface in front of chdb: a current ClickHouse engine reachable the way a server is.

No current ClickHouse server can be installed on the machines this project is built on (Debian has 18.16, the
registries carry no server binary), so ``HttpClickHouse``'s modern dialect is tested against this: the real
engine (chdb, ClickHouse 25+) behind the part of the HTTP interface the adapter uses, as the server documents it:

- ``POST /`` (or ``GET /?query=``): the ``query`` URL parameter and the body are joined into one query, so an
  INSERT sends ``INSERT ... FORMAT JSONEachRow`` as the parameter and its rows as the body;
- other URL parameters are settings for that query (``?max_threads=1``); ``database`` picks the database;
- credentials in ``X-ClickHouse-User`` / ``X-ClickHouse-Key`` (or ``user`` / ``password`` parameters); wrong
  ones get ClickHouse's ``Code: 516 ... AUTHENTICATION_FAILED``;
- a failed query answers HTTP 500 (404 for an unknown table) with the exception text (``Code: N. DB::Exception:
  ...``) and the ``X-ClickHouse-Exception-Code`` header.

Each request runs on a fresh chdb connection so settings never leak between requests.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smith.adapters.chdb import connect
from smith.adapters.clickhouse import error_code, literal

_RESERVED = {"query", "database", "user", "password", "default_format", "query_id", "session_id"}
# As the server maps them: unknown table/database 404, syntax and data errors 400, authentication 401.
_STATUS = {60: 404, 81: 404, 62: 400, 516: 401} | dict.fromkeys((6, 25, 26, 27, 38, 41, 53, 70, 72, 117), 400)


def chdb_http_app(path: Path, *, user: str = "default", password: str = "") -> Starlette:
    """The app; serve it with ``smith.testing.servers.ThreadedServer``. ``path`` is the chdb data directory
    (the one this process already has open, if any)."""

    def run(sql: str, settings: dict[str, str], database: str) -> bytes:
        conn = connect(path)
        try:
            if database:
                conn.query(f"USE {database}")
            for key, value in settings.items():
                conn.query(f"SET {key} = {value if value.lstrip('-').isdigit() else literal(value)}")
            data: bytes = conn.query(sql, "TabSeparated").bytes()
            return data
        finally:
            conn.close()

    async def handle(request: Request) -> Response:
        params = dict(request.query_params)
        given_user = request.headers.get("x-clickhouse-user") or params.get("user") or "default"
        given_key = request.headers.get("x-clickhouse-key") or params.get("password") or ""
        if given_user != user or given_key != password:
            return _error(f"Code: 516. DB::Exception: {given_user}: Authentication failed. (AUTHENTICATION_FAILED)")
        body = await request.body()
        sql = params.get("query", "")
        if body:
            sql = f"{sql}\n{body.decode()}" if sql else body.decode()
        settings = {k: v for k, v in params.items() if k not in _RESERVED and re.fullmatch(r"[a-z_0-9]+", k)}
        try:
            data = await asyncio.to_thread(run, sql, settings, params.get("database", ""))
        except RuntimeError as exc:
            return _error(str(exc))
        return Response(data, media_type="text/plain; charset=UTF-8")

    return Starlette(routes=[Route("/", handle, methods=["GET", "POST"])])


def _error(message: str) -> Response:
    code = error_code(message) or 1000
    headers: dict[str, Any] = {"X-ClickHouse-Exception-Code": str(code)}
    return Response(message + "\n", status_code=_STATUS.get(code, 500), headers=headers, media_type="text/plain")
