"""HTTP pieces shared by Smith's FastAPI services: bounded body reading, JSON answers, the error mapping.

Authentication comes from headers, before any body is read: routes read bodies themselves with ``read_body``
(Content-Length checked up front, the stream counted otherwise; 413 past the limit), never as FastAPI body
parameters, which are read before the route's dependencies run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from smith.errors import AuthError, InvalidInput, PayloadTooLarge, SmithError, Unavailable


def _default(obj: Any) -> Any:
    if isinstance(obj, msgspec.Struct):  # e.g. the log pipeline's records: cheaper to make than pydantic models
        return msgspec.structs.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(data: Any) -> bytes:
    """JSON of dicts, lists, scalars and msgspec structs."""
    return orjson.dumps(data, default=_default)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes without reading it all."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidInput("bad Content-Length")
        if int(length) > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def api_docs(settings: Any) -> dict[str, Any]:
    """FastAPI's arguments for /docs, /redoc and /openapi.json: served only with ``SMITH_API_DOCS`` (they are
    unauthenticated and describe every route)."""
    if settings.api_docs:
        return {}
    return {"docs_url": None, "redoc_url": None, "openapi_url": None}


class ByteBudget:
    """Bodies being read at once, in bytes, bounded: a request reserves its declared length (or the route's
    limit) before reading and waits up to ``wait_seconds`` for room, else 503 + Retry-After."""

    def __init__(self, total: int, wait_seconds: float) -> None:
        self.total, self.wait_seconds = total, wait_seconds
        self.used = 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, request: Request, limit: int) -> AsyncIterator[None]:
        length = request.headers.get("content-length", "")
        n = min(int(length) if length.isdigit() else limit, limit, self.total)
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self.used + n <= self.total), self.wait_seconds)
            except TimeoutError:
                raise Unavailable("too many request bodies are being received at once", retry_after=1.0) from None
            self.used += n
        try:
            yield
        finally:
            async with cond:
                self.used -= n
                cond.notify_all()


def error_response(exc: SmithError) -> Response:
    """A SmithError as JSON with its status; Retry-After when it says when to retry; WWW-Authenticate on 401."""
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else {}
    if isinstance(exc, AuthError) and exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.status_code in (401, 403, 408, 413):
        # The body of a refused request may be unread (authentication comes first): close the connection rather
        # than let the server read and discard the rest of it to keep the connection alive.
        headers["Connection"] = "close"
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers or None)


def validation_message(errors: Sequence[Any], shown: int = 3) -> str:
    """Pydantic's errors as one line: ``body.wait_seconds: Input should be a finite number; ...`` (the input
    itself is never echoed: it may be huge)."""
    parts = []
    for err in list(errors)[:shown]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(errors) - shown
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def add_error_handlers(app: FastAPI, respond: Callable[[Request, SmithError], Response] | None = None) -> None:
    """Every error ``app`` answers goes through ``respond`` (default :func:`error_response`, the documented
    ``{"error", "message", "retryable", "retry_after"?}``): a SmithError as itself, Starlette's own routing
    errors (unknown route 404 ``not_found``, wrong method 405 ``method_not_allowed``, with their headers) and
    a request that fails validation (FastAPI's parameters and bodies, or a model validated in a handler: 400
    ``invalid_input``, never FastAPI's 422 ``detail``) and anything unexpected (500 ``internal``; its text stays
    in the server's log, where Starlette re-raises it)."""

    def answer(request: Request, exc: SmithError) -> Response:
        return respond(request, exc) if respond else error_response(exc)

    @app.exception_handler(SmithError)
    async def _smith(request: Request, exc: SmithError) -> Response:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, InvalidInput(validation_message(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> Response:
        return answer(request, InvalidInput(validation_message(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        err = SmithError(str(exc.detail))
        err.status_code = exc.status_code
        err.code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = answer(request, err)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return answer(request, SmithError("internal error"))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def add_health_routes(app: FastAPI, probe: Callable[[], Awaitable[dict[str, Any]]], dependency: str) -> None:
    """``GET /healthz`` (the process answers) and ``GET /readyz`` (``probe`` answers within 2 s; 503 otherwise,
    naming the ``dependency`` that failed)."""

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        try:
            async with asyncio.timeout(2):
                extra = await probe()
        except (SmithError, TimeoutError) as exc:
            return json_response({"status": "unavailable", dependency: str(exc)}, 503)
        return json_response({"status": "ok", **extra})
