"""What the console reads from the other services, on the operator's behalf.

The browser never holds a service token: the control plane mints short-lived ones itself (an operator token
for the log pipeline's reads, signed with ``SMITH_JWT_SECRET``; a ``cache-admin`` token for the cache server's
``GET /usage``, signed with ``SMITH_CACHE_SHARED_SECRET``) and passes on only what it read.
"""

from __future__ import annotations

from typing import Any

import httpx

from smith import tokens
from smith.control.settings import ControlSettings
from smith.errors import NotFound, SmithError, UpstreamError

TOKEN_TTL = 60.0
CACHE_ADMIN_SCOPE = "cache-admin"  # the cache server's admin scope (read-only use here: /usage)


class Upstream:
    def __init__(self, settings: ControlSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.logs_url = (settings.console_logs_url or settings.logs_url or "").rstrip("/") or None
        self.cache_url = (settings.console_cache_url or settings.cache_url or "").rstrip("/") or None
        self._jwt = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._cache_secret = settings.cache_shared_secret.get_secret_value() if settings.cache_shared_secret else None
        self._http = httpx.AsyncClient(timeout=10.0, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, url: str, secret: str, scope: str, who: str, params: dict[str, Any]) -> Any:
        token = tokens.mint(secret, scope=scope, subject=f"console:{who}", ttl_seconds=TOKEN_TTL)
        try:
            r = await self._http.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{url}: {type(exc).__name__}") from exc
        if r.status_code == 404:
            raise NotFound("not there yet")
        if r.status_code != 200:
            raise UpstreamError(f"{url} answered {r.status_code}")
        return r.json()

    async def log_page(self, job_id: str, after: int, who: str) -> dict[str, Any]:
        """The job's lines after ``after`` (``{"lines", "next_after", "complete"}``); none yet is an empty page."""
        if not self.logs_url or not self._jwt:
            raise SmithError("no log pipeline is configured (SMITH_LOGS_URL)")
        try:
            page: dict[str, Any] = await self._get(
                f"{self.logs_url}/v1/jobs/{job_id}/logs", self._jwt, "operator", who, {"after": after, "limit": 2000}
            )
        except NotFound:
            return {"lines": [], "next_after": after, "complete": False}
        return page

    async def cache_usage(self, who: str) -> dict[str, dict[str, Any]]:
        if not self.cache_url or not self._cache_secret:
            raise SmithError("no cache server is configured (SMITH_CACHE_URL, SMITH_CACHE_SHARED_SECRET)")
        got = await self._get(f"{self.cache_url}/usage", self._cache_secret, CACHE_ADMIN_SCOPE, who, {})
        orgs: dict[str, dict[str, Any]] = got.get("orgs", {})
        return orgs
