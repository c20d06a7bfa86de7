"""The legacy REST cache API of ``@actions/cache`` 3.x (``ACTIONS_CACHE_URL``, ``_apis/artifactcache``).

- ``GET  cache?keys=k1,k2&version=v``  -> 200 ``{cacheKey, scope, cacheVersion, creationTime, archiveLocation}``
  or 204 on a miss (also while the store or Redis is down)
- ``POST caches {key, version, cacheSize}`` -> 201 ``{cacheId}``; 409 when another job holds the key or the
  store is down (the client then skips the save), 400 when the entry is too large
- ``PATCH caches/{id}`` with ``Content-Range: bytes start-end/*``: one chunk, any order, concurrently -> 204;
  only from the scope (org, repository, ref) that reserved the entry, never over bytes already sent (409)
- ``POST caches/{id} {size}`` -> 204 once the chunks cover exactly ``size`` bytes
- ``GET  caches?key=k`` -> ``{totalCount, artifactCaches}`` (the client's miss diagnostics)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from smith.cache import signing
from smith.cache.auth import tenant
from smith.cache.service import CacheService
from smith.cache.twirp import download_base_url, read_json
from smith.domain.cache import Tenant
from smith.errors import Conflict, InvalidInput, Unavailable
from smith.logging import get_logger

log = get_logger("smith.cache.legacy")

PREFIX = "/_apis/artifactcache"
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\*|\d+)$")

router = APIRouter()
Caller = Annotated[Tenant, Depends(tenant)]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"{field} must be an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidInput(f"{field} must be an integer") from exc


@router.get(f"{PREFIX}/cache")
async def get_cache_entry(request: Request, who: Caller, keys: str = "", version: str = "") -> Response:
    service: CacheService = request.app.state.service
    wanted = [k for k in keys.split(",") if k]
    if not wanted:
        raise InvalidInput("keys is required")
    entry = await service.lookup(who, wanted[0], wanted[1:], version)
    if entry is None:
        return Response(status_code=204)
    secret = service.settings.secret() or ""
    url = signing.signed_url(download_base_url(request), secret, "r", entry.id, service.settings.cache_url_ttl_seconds)
    return _json(
        {
            "cacheKey": entry.key,
            "scope": entry.scope,
            "cacheVersion": entry.version,
            "creationTime": datetime.fromtimestamp(entry.created_at, UTC).isoformat(),
            "archiveLocation": url,
        }
    )


@router.get(f"{PREFIX}/caches")
async def list_caches(request: Request, who: Caller, key: str = "") -> Response:
    service: CacheService = request.app.state.service
    try:
        entries = [e for e in await service.meta.entries_of(who.org) if e.repo == who.repo and e.key == key]
    except Unavailable:
        entries = []
    caches = [
        {
            "cacheKey": e.key,
            "scope": e.scope,
            "cacheVersion": e.version,
            "creationTime": datetime.fromtimestamp(e.created_at, UTC).isoformat(),
        }
        for e in entries
        if e.scope in who.read_refs
    ]
    return _json({"totalCount": len(caches), "artifactCaches": caches})


@router.post(f"{PREFIX}/caches")
async def reserve_cache(request: Request, who: Caller) -> Response:
    service: CacheService = request.app.state.service
    data = await read_json(request)
    key, version = data.get("key"), data.get("version")
    if not isinstance(key, str) or not isinstance(version, str):
        raise InvalidInput("key and version must be strings")
    size = _int(data.get("cacheSize") or 0, "cacheSize")
    try:
        entry_id = await service.reserve(who, key, version, size)
    except Unavailable as exc:
        log.warning("save refused: cache unavailable", org=who.org, error=exc.message)
        raise Conflict(f"cache unavailable, not saving: {exc.message}") from exc
    return _json({"cacheId": entry_id}, 201)


@router.patch(PREFIX + "/caches/{cache_id}")
async def upload_chunk(request: Request, who: Caller, cache_id: int) -> Response:
    service: CacheService = request.app.state.service
    match = _RANGE.match(request.headers.get("content-range", ""))
    if not match:
        raise InvalidInput("Content-Range must be 'bytes start-end/*'")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise InvalidInput("Content-Range end is before its start")
    await service.write_chunk(who, cache_id, start, end, request.stream())
    return Response(status_code=204)


@router.post(PREFIX + "/caches/{cache_id}")
async def commit_cache(request: Request, who: Caller, cache_id: int) -> Response:
    service: CacheService = request.app.state.service
    data = await read_json(request)
    size = _int(data.get("size"), "size")
    await service.commit(who, cache_id, size)
    return Response(status_code=204)
