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

- a request body sent with ``Content-Encoding: gzip`` (or deflate) is decompressed;
- ``profile`` settings apply to every request unless its parameters override them, as a user profile's do, with
  the server's early acknowledgements: an INSERT under ``async_insert=1`` (without ``wait_for_async_insert=1``) is
  answered 200 even if storing it then fails; under ``send_progress_in_http_headers=1`` without
  ``wait_end_of_query=1`` the 200 status has already gone when a query fails, so the exception ends the body;
- ``ServerFaults`` makes the next requests fail the way some real servers do: ``"header"`` answers 200 with
  ``X-ClickHouse-Exception-Code`` and stores nothing (23.x-24.8 on a body read timeout); ``"partial"`` answers 200
  with half of the result then a 25.x ``__exception__`` block (an INSERT stores nothing);
- every request's query and URL parameters are kept in ``ServerFaults.seen`` for tests to look at;
- ``constrained`` profile settings are refused if a request changes them (``SETTING_CONSTRAINT_VIOLATION``).

Each request runs on a fresh chdb connection so settings never leak between requests.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smith.adapters.chdb import connect
from smith.adapters.clickhouse import error_code, literal

_RESERVED = {"query", "database", "user", "password", "default_format", "query_id", "session_id", "wait_end_of_query"}
# As the server maps them: unknown table/database 404, syntax and data errors 400, authentication 401.
_STATUS = {60: 404, 81: 404, 62: 400, 516: 401} | dict.fromkeys((6, 25, 26, 27, 38, 41, 53, 70, 72, 117), 400)


@dataclass
class ServerFaults:
    """Failures for the next requests, in order: ``"header"`` or ``"partial"`` (see the module's docstring)."""

    pending: deque[str] = field(default_factory=deque)
    profile: dict[str, str] = field(default_factory=dict)
    constrained: set[str] = field(default_factory=set)  # profile settings a request may not change
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # each request's query and URL parameters


def chdb_http_app(
    path: Path, *, user: str = "default", password: str = "", faults: ServerFaults | None = None
) -> Starlette:
    """The app; serve it with ``smith.testing.servers.ThreadedServer``. ``path`` is the chdb data directory
    (the one this process already has open, if any). ``faults`` (changeable while serving) holds the failures
    to inject and the user profile's settings."""
    faults = faults or ServerFaults()

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
        body = _decoded(await request.body(), request.headers.get("content-encoding", ""))
        sql = params.get("query", "")
        if body:
            sql = f"{sql}\n{body.decode()}" if sql else body.decode()
        faults.seen.append((sql, {k: v for k, v in params.items() if k != "password"}))
        given = {k: v for k, v in params.items() if k not in _RESERVED and re.fullmatch(r"[a-z_0-9]+", k)}
        for name in sorted(faults.constrained):
            if name in given and given[name] != faults.profile.get(name):
                return _error(
                    f"Code: 452. DB::Exception: Setting {name} should not be changed. (SETTING_CONSTRAINT_VIOLATION)"
                )
        settings = faults.profile | given
        is_insert = sql.lstrip().upper().startswith("INSERT")
        fault = faults.pending.popleft() if faults.pending else ""
        if fault == "header":
            return _error(_TIMEOUT, status=200)
        if fault == "partial" and is_insert:
            return Response(_exception_block(_TIMEOUT), media_type="text/plain")
        early_ack = is_insert and settings.get("async_insert") == "1" and settings.get("wait_for_async_insert") != "1"
        streaming = settings.get("send_progress_in_http_headers") == "1" and params.get("wait_end_of_query") != "1"
        try:
            data = await asyncio.to_thread(run, sql, settings, params.get("database", ""))
        except RuntimeError as exc:
            if early_ack:  # acknowledged when buffered; the failure only reaches the server's log
                return Response(b"", media_type="text/plain")
            if streaming:  # the 200 status line went out with the first progress header
                return Response(str(exc).encode() + b"\n", media_type="text/plain")
            return _error(str(exc))
        if fault == "partial":
            return Response(data[: len(data) // 2] + _exception_block(_TIMEOUT), media_type="text/plain")
        return Response(data, media_type="text/plain; charset=UTF-8")

    return Starlette(routes=[Route("/", handle, methods=["GET", "POST"])])


_TIMEOUT = "Code: 209. DB::Exception: Timeout exceeded while reading from socket (127.0.0.1:1). (SOCKET_TIMEOUT)"


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _exception_block(message: str) -> bytes:
    """How 25.x ends a 200 body it had started when the query fails (``http_response_exception_tag``)."""
    tag = "b8c1f2a9d0e3"
    text = message.encode()
    return (
        b"__exception__\r\n"
        + tag.encode()
        + b"\r\n"
        + text
        + b"\r\n"
        + f"{len(text)} {tag}".encode()
        + b"\r\n__exception__\r\n"
    )


def _error(message: str, *, status: int | None = None) -> Response:
    code = error_code(message) or 1000
    headers: dict[str, Any] = {"X-ClickHouse-Exception-Code": str(code)}
    status = status if status is not None else _STATUS.get(code, 500)
    return Response(message + "\n", status_code=status, headers=headers, media_type="text/plain")
