"""Usage, quotas and eviction, cleanup of abandoned uploads, purge, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from smith import tokens
from smith.adapters.filesystem import FilesystemBlobStore
from smith.cache.metadata import Metadata
from smith.cache.service import CacheService
from smith.cache.settings import CacheSettings
from smith.cli import app as cli
from smith.domain.cache import Tenant
from tests.cache.conftest import SECRET, admin_token, client
from tests.cache.test_protocol import VERSION, restore_v2, save_v2

ACME = Tenant(org="acme", repo="web", ref="refs/heads/main", read_refs=("refs/heads/main",))


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def save(service: CacheService, key: str, data: bytes, who: Tenant = ACME) -> int:
    entry_id = await service.reserve(who, key, VERSION)
    await service.write_part(entry_id, "single", body(data), len(data))
    await service.assemble(entry_id, ["single"])
    return await service.finalize(who, key, VERSION, len(data))


@pytest.fixture
def service(settings: CacheSettings, redis_client: aioredis.Redis, tmp_path: Path) -> CacheService:
    return CacheService(settings, Metadata(redis_client), FilesystemBlobStore(tmp_path / "blobs"))


async def test_usage_counts_bytes_entries_hits_misses(service: CacheService) -> None:
    await save(service, "a", b"x" * 10)
    await save(service, "b", b"y" * 5)
    assert await service.lookup(ACME, "a", [], VERSION)
    assert await service.lookup(ACME, "zzz", [], VERSION) is None
    u = (await service.usage("acme"))["acme"]
    assert (u["bytes"], u["entries"], u["hits"], u["misses"]) == (15, 2, 1, 1)
    assert u["last_access"] is not None and abs(float(str(u["last_access"])) - time.time()) < 3600


async def test_quota_evicts_least_recently_used(service: CacheService) -> None:
    service.settings = service.settings.model_copy(update={"cache_org_quota_bytes": 100})
    first = await save(service, "one", b"1" * 40)
    await save(service, "two", b"2" * 40)
    assert await service.lookup(ACME, "one", [], VERSION)  # "one" is now more recent than "two"
    await save(service, "three", b"3" * 40)
    assert await service.lookup(ACME, "two", [], VERSION) is None
    found = await service.lookup(ACME, "one", [], VERSION)
    assert found is not None and found.id == first
    assert await service.lookup(ACME, "three", [], VERSION)
    assert (await service.usage("acme"))["acme"]["bytes"] == 80
    blobs = [p for p in (service.store.root / "blobs").rglob("*") if p.is_file()]  # type: ignore[attr-defined]
    assert len(blobs) == 2


async def test_unused_entries_expire(service: CacheService) -> None:
    await save(service, "old", b"o" * 3)
    later = time.time() + service.settings.cache_unused_days * 86400 + 60
    done = await service.janitor_once(now=later)
    assert done["unused"] == 1
    assert await service.lookup(ACME, "old", [], VERSION) is None
    assert (await service.usage("acme"))["acme"]["entries"] == 0


async def test_abandoned_and_orphan_uploads_are_cleaned(service: CacheService, tmp_path: Path) -> None:
    # A job reserved and sent a part, then its VM died: no finalize ever comes.
    entry_id = await service.reserve(ACME, "crashed", VERSION)
    await service.write_part(entry_id, "b01", body(b"half"), 4)
    # A server crashed between writing a part and recording it: the store has bytes Redis never heard of.
    await service.store.write_part("999999", "p", body(b"orphan"), 6)
    uploads = tmp_path / "blobs" / "uploads"
    assert sorted(os.listdir(uploads)) == sorted([str(entry_id), "999999"])
    service.settings = service.settings.model_copy(update={"cache_upload_ttl_seconds": 0.001})
    await asyncio.sleep(0.01)
    done = await service.janitor_once(now=time.time() + 10)
    assert done["uploads"] == 1 and done["orphans"] == 1
    assert os.listdir(uploads) == []
    # The key is free again.
    await save(service, "crashed", b"whole")


async def test_purge_by_repo_and_prefix(service: CacheService) -> None:
    api = Tenant(org="acme", repo="api", ref="refs/heads/main", read_refs=("refs/heads/main",))
    await save(service, "npm-1", b"a")
    await save(service, "pip-1", b"b")
    await save(service, "npm-1", b"c", who=api)
    assert await service.purge("acme", repo="web", prefix="npm-") == 1
    assert await service.lookup(ACME, "npm-1", [], VERSION) is None
    assert await service.lookup(ACME, "pip-1", [], VERSION)
    assert await service.lookup(api, "npm-1", [], VERSION)
    assert await service.purge("acme") == 2
    assert (await service.usage("acme"))["acme"] == {**(await service.usage("acme"))["acme"], "bytes": 0, "entries": 0}


def test_usage_endpoint_and_admin_purge_over_http(serve: Any) -> None:
    srv = serve()
    c = client(srv)
    save_v2(c, "k1", b"12345")
    assert c.get("/usage").json()["orgs"]["acme"]["bytes"] == 5
    assert c.get("/usage", params={"org": "other"}).json()["orgs"].keys() == {"acme"}  # an org sees only itself
    assert c.post("/admin/purge", json={"org": "acme"}).status_code == 403  # org tokens cannot purge
    admin = client(srv, admin_token())
    assert admin.get("/usage").json()["orgs"]["acme"]["entries"] == 1
    assert admin.post("/admin/purge", json={"org": "../x"}).status_code == 400
    assert admin.post("/admin/purge", json={"org": "acme", "prefix": "k"}).json() == {"deleted": 1}
    assert restore_v2(c, "k1") is None


def test_cli_token_usage_purge(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = serve()
    monkeypatch.setenv("SMITH_CACHE_SHARED_SECRET", SECRET)
    monkeypatch.setenv("SMITH_CACHE_URL", srv.url)
    runner = CliRunner()
    out = runner.invoke(
        cli, ["cache", "token", "--org-id", "acme", "--repo", "web", "--ref", "refs/heads/main", "--ttl", "60"]
    )
    assert out.exit_code == 0, out.output
    claims = tokens.verify(SECRET, out.output.strip(), scope="cache")
    assert (claims["org"], claims["repo"], claims["ref"]) == ("acme", "web", "refs/heads/main")
    assert claims["exp"] - claims["iat"] == 60
    save_v2(client(srv, out.output.strip()), "from-cli", b"abc")
    pr = runner.invoke(
        cli,
        [
            *["cache", "token", "--org-id", "acme", "--repo", "acme/web", "--ref", "refs/pull/3/merge"],
            *["--base-ref", "refs/heads/dev", "--default-ref", "refs/heads/main"],
        ],
    )
    assert pr.exit_code == 0, pr.output
    pr_claims = tokens.verify(SECRET, pr.output.strip(), scope="cache")
    assert (pr_claims["repo"], pr_claims["base_ref"], pr_claims["default_ref"]) == (
        "web",
        "refs/heads/dev",
        "refs/heads/main",
    )
    assert restore_v2(client(srv, pr.output.strip()), "from-cli") == ("from-cli", b"abc")  # main is readable
    elsewhere = runner.invoke(cli, ["cache", "token", "--org-id", "acme", "--repo", "evil/web"])
    assert elsewhere.exit_code != 0 and "not in org" in elsewhere.output
    usage = runner.invoke(cli, ["cache", "usage", "--json"])
    assert usage.exit_code == 0, usage.output
    assert _json_out(usage.output)["orgs"]["acme"]["bytes"] == 3
    table = runner.invoke(cli, ["cache", "usage"])
    assert "acme" in table.output
    purged = runner.invoke(cli, ["cache", "purge", "--org", "acme", "--repo", "web", "--json"])
    assert _json_out(purged.output) == {"deleted": 1}
    bad = runner.invoke(cli, ["cache", "token", "--org-id", "a/b", "--ttl", "60"])
    assert bad.exit_code != 0 and "org" in bad.output
    monkeypatch.delenv("SMITH_CACHE_SHARED_SECRET")
    assert runner.invoke(cli, ["cache", "token", "--org-id", "acme"]).exit_code != 0


def _json_out(output: str) -> Any:
    """The command's JSON; the in-process server's log lines may come first on the same stdout."""
    return json.loads(output[output.index("{\n") :])
