"""The cache server's HTTP app: ``create_app(settings)`` is its composition root.

Routes: the v2 Twirp service (``/twirp/...``), the legacy REST API (``/_apis/artifactcache/...``), the signed
blob URLs (``/blob/smith/{id}``), ``GET /usage``, ``POST /admin/purge`` and ``GET /healthz``. One exception
handler maps ``smith.errors`` to a status, in the error format each protocol's client understands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError

from smith.adapters.redis import connect
from smith.asyncutil import supervise
from smith.cache import blob, legacy, metrics, signing, twirp
from smith.cache.auth import admin, tenant_or_admin
from smith.cache.metadata import Metadata
from smith.cache.service import CacheService, RangeNotSatisfiable
from smith.cache.settings import CacheSettings
from smith.cache.twirp import read_json
from smith.domain.cache import Tenant, check_name
from smith.errors import ConfigError, InvalidInput, SmithError
from smith.http import add_error_handlers
from smith.logging import get_logger
from smith.metrics import add_metrics_route
from smith.ports import BlobStore

log = get_logger("smith.cache.http")


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def build_store(settings: CacheSettings) -> BlobStore:
    if settings.cache_storage == "filesystem":
        from smith.adapters.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(settings.storage_path, direct=settings.cache_direct_io)
    if settings.cache_storage == "s3":
        if not settings.cache_s3_bucket:
            raise ConfigError("SMITH_CACHE_STORAGE=s3 needs SMITH_CACHE_S3_BUCKET")
        from smith.adapters.resilience import CircuitBreaker
        from smith.adapters.s3 import S3BlobStore, S3Options
        from smith.retry import RetryPolicy

        options = S3Options(
            endpoint_url=settings.cache_s3_endpoint,
            region=settings.cache_s3_region,
            prefix=settings.cache_s3_prefix,
            checksum=settings.cache_s3_checksum,
            addressing_style=settings.cache_s3_addressing_style,
            ca_bundle=str(settings.cache_s3_ca_bundle) if settings.cache_s3_ca_bundle else None,
            sse=settings.cache_s3_sse,
            sse_kms_key_id=settings.cache_s3_sse_kms_key_id,
            storage_class=settings.cache_s3_storage_class,
            read_timeout=settings.cache_s3_read_timeout,
            threads=settings.cache_s3_threads,
        )
        return S3BlobStore(
            settings.cache_s3_bucket,
            options=options,
            spool_dir=settings.spool_dir,
            policy=RetryPolicy(
                settings.cache_s3_max_retries, settings.cache_s3_retry_base, settings.cache_s3_retry_max
            ),
            breaker=CircuitBreaker(settings.cache_s3_circuit_failures, settings.cache_s3_circuit_reset),
        )
    raise ConfigError(f"SMITH_CACHE_STORAGE={settings.cache_storage!r}: must be 'filesystem' or 's3'")


def error_response(request: Request, exc: SmithError) -> Response:
    resp = _error_response(request, exc)
    if isinstance(exc, RangeNotSatisfiable):
        resp.headers["Content-Range"] = f"bytes */{exc.size}"
    return resp


def _error_response(request: Request, exc: SmithError) -> Response:
    path = request.url.path
    if path.startswith(twirp.PREFIX):
        return twirp.twirp_error(exc.status_code, exc.message)
    if path.startswith(signing.PATH):
        code = exc.code if exc.code[:1].isupper() else "".join(p.title() for p in exc.code.split("_"))
        return blob.azure_error(exc.status_code, code, exc.message)
    resp = _json({**exc.to_dict(), "message": exc.message}, exc.status_code)
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(int(exc.retry_after) or 1)
    return resp


async def _store_families(app: FastAPI) -> Any:
    service = getattr(app.state, "service", None)
    return list(metrics.families(service.store)) if service is not None else []


def create_app(
    settings: CacheSettings,
    *,
    store: BlobStore | None = None,
    redis: aioredis.Redis | None = None,
    janitor: bool = True,
) -> FastAPI:
    """Build the app. Redis from ``settings.redis_url`` (an embedded Valkey when unset) unless one is passed."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = None
        client = redis
        if client is None:
            url = settings.redis_url
            if not url:
                from smith.adapters.redis.embedded import EmbeddedRedis

                embedded = EmbeddedRedis(settings.data_dir / "cache" / "valkey")
                await asyncio.to_thread(embedded.start)
                url = embedded.url
            client = connect.client(url)
        blobs = store or build_store(settings)
        metadata = Metadata(client)
        try:
            await metadata.migrate()
        except SmithError as exc:  # Redis may come up later; the keys are renamed at the next start
            log.warning("redis not ready at start: old keys not checked", error=exc.message)
        service = CacheService(settings, metadata, blobs)
        app.state.service = service
        task = asyncio.create_task(supervise("cache-janitor", service.run_janitor)) if janitor else None
        try:
            yield
        finally:
            service.shutdown()
            if task:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 5)
            if store is None:
                await blobs.aclose()
            if redis is None:
                await client.aclose()
            if embedded:
                await asyncio.to_thread(embedded.stop)

    app = FastAPI(title="smith cache", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    def answer(request: Request, exc: SmithError) -> Response:
        if exc.status_code >= 500:
            log.warning("cache request failed", path=request.url.path, error=exc.message, code=exc.code)
        return error_response(request, exc)

    add_error_handlers(app, answer)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request, InvalidInput(f"{where}: {first.get('msg', 'invalid request')}"))

    add_metrics_route(app, settings.metrics_token, lambda: _store_families(app))
    app.include_router(twirp.router)
    app.include_router(legacy.router)
    app.include_router(blob.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        service: CacheService = request.app.state.service
        checks: dict[str, str] = {}
        for name, probe in (("redis", service.meta.ping), ("store", service.store.check)):
            try:
                await probe()
                checks[name] = "ok"
            except SmithError as exc:
                checks[name] = exc.message
        ok = all(v == "ok" for v in checks.values())
        return _json({"status": "ok" if ok else "degraded", **checks}, 200 if ok else 503)

    @app.get("/usage")
    async def usage(request: Request, who: Annotated[Tenant, Depends(tenant_or_admin)], org: str = "") -> Response:
        """An org token sees its own org; an admin token sees every org (or ``?org=``)."""
        service: CacheService = request.app.state.service
        if who.admin:
            target = check_name(org, what="org") if org else None
        else:
            target = who.org
        return _json({"orgs": await service.usage(target)})

    @app.post("/admin/purge")
    async def purge(request: Request, _: Annotated[str, Depends(admin)]) -> Response:
        service: CacheService = request.app.state.service
        data = await read_json(request)
        org = data.get("org")
        repo = data.get("repo")
        prefix = data.get("prefix")
        if not isinstance(org, str):
            raise InvalidInput("org is required")
        check_name(org, what="org")
        if repo is not None and (not isinstance(repo, str) or not repo):
            raise InvalidInput("repo must be a non-empty string")
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidInput("prefix must be a string")
        deleted = await service.purge(org, repo, prefix or None)
        return _json({"deleted": deleted})

    return app
