"""Every error a service answers is in the documented shape ``{"error", "message", "retryable"}``: not only
the errors Smith raises, but an unknown route (404), a wrong method (405) and an unexpected exception (500)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

NOWHERE = "redis://127.0.0.1:9/0"  # never reached: these requests end before any backend call


def control(tmp_path: Path) -> FastAPI:
    from smith.control.app import create_app
    from smith.control.settings import ControlSettings

    return create_app(ControlSettings(redis_url=NOWHERE, data_dir=tmp_path))


def logs(tmp_path: Path) -> FastAPI:
    from smith.logs.app import create_app
    from smith.logs.settings import LogsSettings

    return create_app(LogsSettings(clickhouse_url="http://127.0.0.1:9", data_dir=tmp_path))


def cache(tmp_path: Path) -> FastAPI:
    import redis.asyncio as aioredis

    from smith.cache.app import create_app
    from smith.cache.settings import CacheSettings

    settings = CacheSettings(data_dir=tmp_path, cache_shared_secret="x" * 32)
    return create_app(settings, redis=aioredis.from_url(NOWHERE), janitor=False)


@pytest.mark.parametrize("make", [control, logs, cache])
async def test_routing_errors_and_the_unexpected_are_in_the_documented_shape(
    make: Callable[[Path], FastAPI], tmp_path: Path
) -> None:
    app = make(tmp_path)

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for method, path, status in [("GET", "/no/such/route", 404), ("POST", "/healthz", 405), ("GET", "/boom", 500)]:
            r = await client.request(method, path)
            assert r.status_code == status
            body = r.json()
            assert set(body) == {"error", "message", "retryable"}, body
            assert isinstance(body["error"], str) and isinstance(body["message"], str)
            assert "a bug" not in body["message"]  # an unexpected error's text stays in the log
