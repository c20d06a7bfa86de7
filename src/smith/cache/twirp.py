"""The v2 cache service as ``@actions/cache`` 4.x+ speaks it: Twirp JSON over HTTP.

``POST /twirp/github.actions.results.api.v1.CacheService/{CreateCacheEntry,FinalizeCacheEntryUpload,
GetCacheEntryDownloadURL}``, bodies with proto field names (``signed_upload_url``, ``size_bytes`` as a string).
Errors are Twirp error bodies ``{"code", "msg"}``. The client retries 5xx for ~25 s, so an outage is answered
with ``200 {"ok": false}`` instead: the restore misses and the save is skipped at once.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from fastapi import APIRouter, Depends, Request, Response

from smith.cache import signing
from smith.cache.auth import tenant
from smith.cache.service import CacheService
from smith.domain.cache import Tenant
from smith.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from smith.logging import get_logger

log = get_logger("smith.cache.twirp")

PREFIX = "/twirp/github.actions.results.api.v1.CacheService"
MAX_BODY = 64 * 1024

router = APIRouter()
Caller = Annotated[Tenant, Depends(tenant)]

TWIRP_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found"}
TWIRP_CODES |= {409: "already_exists", 413: "invalid_argument", 416: "out_of_range", 503: "unavailable"}


def twirp_error(status: int, message: str) -> Response:
    code = TWIRP_CODES.get(status, "internal")
    status = 400 if status == 413 else status
    return Response(orjson.dumps({"code": code, "msg": message}), status_code=status, media_type="application/json")


def _ok(data: dict[str, Any]) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def read_json(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge("request body is too large")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("body is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    return data


def _str(data: dict[str, Any], field: str) -> str:
    value = data.get(field, "")
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    return value


def base_url(request: Request) -> str:
    service: CacheService = request.app.state.service
    return service.settings.cache_public_url or str(request.base_url)


def download_base_url(request: Request) -> str:
    """``base_url`` with the host swapped for ``SMITH_CACHE_DOWNLOAD_HOST`` when set (port and scheme kept):
    the client downloads in parallel only from a host ending in ``.blob.core.windows.net``."""
    service: CacheService = request.app.state.service
    base = base_url(request)
    host = service.settings.cache_download_host
    if not host:
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


@router.post(f"{PREFIX}/CreateCacheEntry")
async def create_cache_entry(request: Request, who: Caller) -> Response:
    data = await read_json(request)
    service: CacheService = request.app.state.service
    try:
        entry_id = await service.reserve(who, _str(data, "key"), _str(data, "version"))
    except Unavailable as exc:
        log.warning("save refused: cache unavailable", org=who.org, error=exc.message)
        return _ok({"ok": False, "signed_upload_url": "", "message": f"cache unavailable, not saving: {exc.message}"})
    secret = service.settings.secret() or ""
    url = signing.signed_url(base_url(request), secret, "w", entry_id, service.settings.cache_url_ttl_seconds)
    return _ok({"ok": True, "signed_upload_url": url})


@router.post(f"{PREFIX}/FinalizeCacheEntryUpload")
async def finalize_cache_entry_upload(request: Request, who: Caller) -> Response:
    data = await read_json(request)
    service: CacheService = request.app.state.service
    raw_size = data.get("size_bytes", "0")
    try:
        size = int(raw_size)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("size_bytes must be an integer") from exc
    try:
        entry_id = await service.finalize(who, _str(data, "key"), _str(data, "version"), size)
    except Unavailable as exc:
        return _ok({"ok": False, "entry_id": "0", "message": f"cache unavailable: {exc.message}"})
    return _ok({"ok": True, "entry_id": str(entry_id)})


@router.post(f"{PREFIX}/GetCacheEntryDownloadURL")
async def get_cache_entry_download_url(request: Request, who: Caller) -> Response:
    data = await read_json(request)
    service: CacheService = request.app.state.service
    restore_keys = data.get("restore_keys") or []
    if not isinstance(restore_keys, list) or not all(isinstance(k, str) for k in restore_keys):
        raise InvalidInput("restore_keys must be a list of strings")
    entry = await service.lookup(who, _str(data, "key"), restore_keys, _str(data, "version"))
    if entry is None:
        return _ok({"ok": False, "signed_download_url": "", "matched_key": ""})
    secret = service.settings.secret() or ""
    url = signing.signed_url(download_base_url(request), secret, "r", entry.id, service.settings.cache_url_ttl_seconds)
    return _ok({"ok": True, "signed_download_url": url, "matched_key": entry.key})


@router.post(PREFIX + "/{method}")
async def unknown_method(method: str) -> Response:
    raise NotFound(f"no such method {method!r}")
