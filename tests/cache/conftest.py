"""Cache fixtures: a real moto S3 server, both blob stores, and the cache app under uvicorn on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from smith import tokens
from smith.adapters.filesystem import FilesystemBlobStore
from smith.adapters.resilience import CircuitBreaker
from smith.adapters.s3 import S3BlobStore
from smith.cache.app import create_app
from smith.cache.limits import uvicorn_options
from smith.cache.settings import CacheSettings
from smith.ports import BlobStore
from smith.retry import RetryPolicy
from smith.testing.servers import ThreadedServer, free_port

SECRET = "cache-test-secret-0123456789abcdef0123"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for var, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(var, value)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        yield f"http://127.0.0.1:{port}"
        server.stop()


@pytest.fixture
def bucket(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = f"cache-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def make_s3(moto_url: str, bucket: str, spool: Path, **kw: Any) -> S3BlobStore:
    return S3BlobStore(
        bucket,
        endpoint_url=moto_url,
        spool_dir=spool,
        policy=kw.pop("policy", RetryPolicy(2, 0.01, 0.05)),
        breaker=kw.pop("breaker", CircuitBreaker(3, 30.0)),
        **kw,
    )


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    moto_url = request.getfixturevalue("moto_url")
    bucket = request.getfixturevalue("bucket")
    return make_s3(moto_url, bucket, tmp_path / "spool")


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> CacheSettings:
    return CacheSettings(
        redis_url=redis_url,
        cache_shared_secret=SECRET,
        cache_storage_path=tmp_path / "blobs",
        data_dir=tmp_path / "data",
        cache_max_entry_bytes=64 * 1024 * 1024,
        cache_org_quota_bytes=512 * 1024 * 1024,
    )


@pytest.fixture
def serve(settings: CacheSettings) -> Iterator[Callable[..., ThreadedServer]]:
    """``serve(store, **setting_overrides)``: the app on a loopback port, stopped after the test."""
    started: list[ThreadedServer] = []

    def start(store: BlobStore | None = None, **overrides: Any) -> ThreadedServer:
        s = settings.model_copy(update=overrides)
        srv = ThreadedServer(create_app(s, store=store, janitor=False), **uvicorn_options(s.cache_max_header_bytes))
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def token(org: str = "acme", repo: str = "web", ref: str = "refs/heads/main", **claims: Any) -> str:
    return tokens.mint(SECRET, scope="cache", subject=org, ttl_seconds=600, org=org, repo=repo, ref=ref, **claims)


def admin_token() -> str:
    return tokens.mint(SECRET, scope="cache-admin", subject="ops", ttl_seconds=600)


def client(srv: ThreadedServer, tok: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {tok or token()}"}
    return httpx.Client(base_url=srv.url, headers=headers, timeout=30)
