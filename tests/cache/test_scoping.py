"""Every write to an entry comes from the scope that reserved it; ids cannot be guessed; limits hold under races."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from smith.adapters.filesystem import FilesystemBlobStore
from smith.cache.metadata import Metadata
from smith.cache.service import CacheService
from smith.cache.settings import CacheSettings
from smith.domain.cache import Tenant
from smith.errors import PayloadTooLarge
from smith.ports import BlobStore
from tests.cache.conftest import client, token
from tests.cache.test_protocol import VERSION

V1 = "/_apis/artifactcache"
MAIN = token(ref="refs/heads/main")
PR = token(ref="refs/pull/7/merge", base_ref="refs/heads/main", default_ref="refs/heads/main")


def reserve(c: httpx.Client, key: str, size: int) -> int:
    r = c.post(f"{V1}/caches", json={"key": key, "version": VERSION, "cacheSize": size})
    assert r.status_code == 201, r.text
    return int(r.json()["cacheId"])


def patch(c: httpx.Client, cache_id: int, start: int, data: bytes) -> httpx.Response:
    end = start + len(data) - 1
    return c.patch(f"{V1}/caches/{cache_id}", content=data, headers={"Content-Range": f"bytes {start}-{end}/*"})


def restore_v1(c: httpx.Client, key: str) -> bytes | None:
    r = c.get(f"{V1}/cache", params={"keys": key, "version": VERSION})
    if r.status_code == 204:
        return None
    return httpx.get(r.json()["archiveLocation"]).content


@pytest.mark.parametrize(
    "intruder",
    [
        PR,  # a pull request of the same repository (it may read main, never write there)
        token(ref="refs/heads/feature", default_ref="refs/heads/main"),
        token(repo="other", ref="refs/heads/main"),
        token(org="evil", ref="refs/heads/main"),
    ],
    ids=["pull-request", "other-branch", "other-repo", "other-org"],
)
def test_legacy_upload_cannot_be_written_or_committed_from_another_scope(
    serve: Any, store: BlobStore, intruder: str
) -> None:
    """The poisoning: main reserves ``deps`` and sends ``good`` at offset 4; a pull request's token writes ``EVIL`` at
    offset 0 and commits main's upload. Main must restore nothing it did not write."""
    srv = serve(store)
    main, evil = client(srv, MAIN), client(srv, intruder)
    cache_id = reserve(main, "deps", 8)
    assert patch(main, cache_id, 4, b"good").status_code == 204
    assert patch(evil, cache_id, 0, b"EVIL").status_code == 404
    assert evil.post(f"{V1}/caches/{cache_id}", json={"size": 8}).status_code == 404
    assert patch(main, cache_id, 0, b"main").status_code == 204
    assert main.post(f"{V1}/caches/{cache_id}", json={"size": 8}).status_code == 204
    assert restore_v1(main, "deps") == b"maingood"


def test_legacy_chunk_never_replaces_an_earlier_one(serve: Any, store: BlobStore) -> None:
    srv = serve(store)
    main = client(srv, MAIN)
    cache_id = reserve(main, "deps", 8)
    assert patch(main, cache_id, 0, b"good").status_code == 204
    assert patch(main, cache_id, 0, b"EVIL").status_code == 409
    assert patch(main, cache_id, 2, b"EVIL").status_code == 409  # overlaps bytes 2-3
    assert patch(main, cache_id, 4, b"more").status_code == 204
    assert main.post(f"{V1}/caches/{cache_id}", json={"size": 8}).status_code == 204
    assert restore_v1(main, "deps") == b"goodmore"


def test_entry_ids_are_not_sequential(serve: Any) -> None:
    main = client(serve(), MAIN)
    ids = [reserve(main, f"k{i}", 1) for i in range(6)]
    assert len(set(ids)) == 6
    assert all(0 < i < 2**53 for i in ids)
    assert sorted(ids) != list(range(min(ids), min(ids) + 6))
    assert max(ids) > 2**32  # drawn from 2**53: a neighbour's id is not one guess away


def test_pull_request_reads_base_but_saves_to_its_own_scope(serve: Any) -> None:
    srv = serve()
    main, pr = client(srv, MAIN), client(srv, PR)
    cache_id = reserve(main, "deps", 4)
    assert patch(main, cache_id, 0, b"main").status_code == 204
    assert main.post(f"{V1}/caches/{cache_id}", json={"size": 4}).status_code == 204
    assert restore_v1(pr, "deps") == b"main"
    # The PR may save a key main has; it lands in the PR's scope and main keeps its own.
    pr_id = reserve(pr, "deps", 4)
    assert patch(pr, pr_id, 0, b"EVIL").status_code == 204
    assert pr.post(f"{V1}/caches/{pr_id}", json={"size": 4}).status_code == 204
    assert restore_v1(main, "deps") == b"main"
    assert restore_v1(pr, "deps") == b"EVIL"


def test_oversized_request_head_is_refused(serve: Any) -> None:
    """A 1 MiB header is not buffered: 431 (or a closed connection), never an answer from the app."""
    srv = serve()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
        try:
            sock.sendall(head)
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert httpx.get(f"{srv.url}/healthz").status_code == 200  # a normal request still works
    big_token = httpx.get(f"{srv.url}/healthz", headers={"X-Pad": "p" * 8000})
    assert big_token.status_code == 200  # headers well under the limit pass


@pytest.mark.parametrize("size", [33 * 1024, 64 * 1024])
def test_a_head_over_the_limit_that_comes_in_one_read_is_refused(serve: Any, size: int) -> None:
    """A head over the 32 KiB limit whose bytes all arrive in one socket read (so it is never seen incomplete) is
    refused all the same (a 64 KiB header was answered by the app before), and what follows it on the connection
    is not taken for a next request."""
    srv = serve()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        head = b"PUT /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\nContent-Length: 20\r\n\r\n"
        sock.sendall(head + b"GET /usage HTTP/1.1\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431") and answer.count(b"HTTP/1.1") == 1, answer[:300]


async def test_concurrent_parts_cannot_overshoot_the_entry_limit(
    settings: CacheSettings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Ten 20-byte parts start together under a 100-byte limit: the bytes are claimed before they are written,
    so exactly five are accepted (a check of what was already written would let all ten through)."""
    service = CacheService(
        settings.model_copy(update={"cache_max_entry_bytes": 100}),
        Metadata(redis_client),
        FilesystemBlobStore(tmp_path / "blobs"),
    )
    who = Tenant(org="acme", repo="web", ref="refs/heads/main", read_refs=("refs/heads/main",))
    entry_id = await service.reserve(who, "k", VERSION)
    gate = asyncio.Event()
    started: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        started.append(1)
        await gate.wait()
        yield b"x" * 20

    async def put(i: int) -> str:
        try:
            await service.write_part(entry_id, f"b{i:02d}", body(), 20)
        except PayloadTooLarge:
            return "refused"
        return "written"

    tasks = [asyncio.create_task(put(i)) for i in range(10)]
    while len(started) + sum(t.done() for t in tasks) < 10:  # every part is writing or was refused
        await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(results) == ["refused"] * 5 + ["written"] * 5
    assert sum((await service.meta.parts(entry_id)).values()) == 100
