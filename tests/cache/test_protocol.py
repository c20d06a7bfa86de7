"""Both protocols over real HTTP, on both stores: what the client sends, what it gets back, what is refused."""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from smith import tokens
from smith.cache import signing
from smith.ports import BlobStore
from tests.cache.conftest import SECRET, client, token

TWIRP = "/twirp/github.actions.results.api.v1.CacheService"
VERSION = "a" * 64


def create(c: httpx.Client, key: str, version: str = VERSION) -> httpx.Response:
    return c.post(f"{TWIRP}/CreateCacheEntry", json={"key": key, "version": version})


def upload_blocks(url: str, blocks: list[bytes], order: list[int] | None = None) -> None:
    """Stage blocks (in ``order``, to show arrival order does not matter) then commit the list, as the SDK does."""
    ids = [base64.b64encode(f"block-{i:06d}".encode()).decode() for i in range(len(blocks))]
    for i in order or range(len(blocks)):
        r = httpx.put(f"{url}&comp=block&blockid={quote(ids[i])}", content=blocks[i])
        assert r.status_code == 201, r.text
        assert r.headers["etag"]
    xml = "<?xml version='1.0' encoding='utf-8'?><BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids)
    r = httpx.put(f"{url}&comp=blocklist", content=xml + "</BlockList>")
    assert r.status_code == 201, r.text


def save_v2(c: httpx.Client, key: str, data: bytes, version: str = VERSION) -> int:
    r = create(c, key, version)
    assert r.status_code == 200 and r.json()["ok"], r.text
    put = httpx.put(r.json()["signed_upload_url"], content=data, headers={"x-ms-blob-type": "BlockBlob"})
    assert put.status_code == 201, put.text
    fin = c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": key, "version": version, "size_bytes": str(len(data))}
    )
    assert fin.status_code == 200 and fin.json()["ok"], fin.text
    return int(fin.json()["entry_id"])


def restore_v2(c: httpx.Client, key: str, restore: list[str] | None = None, version: str = VERSION) -> Any:
    r = c.post(
        f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": key, "restore_keys": restore or [], "version": version}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    if not body["ok"]:
        return None
    got = httpx.get(body["signed_download_url"])
    assert got.status_code == 200
    return body["matched_key"], got.content


def test_v2_blocks_out_of_order_round_trip(serve: Any, store: BlobStore) -> None:
    srv = serve(store)
    c = client(srv)
    blocks = [os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024), b"tail"]
    r = create(c, "deps-linux-1")
    url = r.json()["signed_upload_url"]
    assert "sig=" in url and url.startswith(srv.url + signing.PATH)
    upload_blocks(url, blocks, order=[2, 0, 1])
    fin = c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload",
        json={"key": "deps-linux-1", "version": VERSION, "size_bytes": str(sum(map(len, blocks)))},
    )
    assert fin.json()["ok"]
    assert restore_v2(c, "deps-linux-1") == ("deps-linux-1", b"".join(blocks))


def test_ranged_download_and_range_past_end(serve: Any, store: BlobStore) -> None:
    srv = serve(store)
    c = client(srv)
    data = bytes(range(256)) * 40
    save_v2(c, "ranged", data)
    url = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "ranged", "version": VERSION}).json()[
        "signed_download_url"
    ]
    part = httpx.get(url, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206
    assert part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    past = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    for ignored in ("items=0-9", "bytes=0-1,5-9", "bytes=9-2", "bytes=x"):
        whole = httpx.get(url, headers={"Range": ignored})
        assert (whole.status_code, whole.content) == (200, data), ignored
        assert "content-range" not in whole.headers


def test_keys_with_slashes_and_backslashes_round_trip(serve: Any, store: BlobStore) -> None:
    """GitHub's rule is 512 characters and no commas; ``Linux-refs/heads/main`` is a common key."""
    srv = serve(store)
    c = client(srv)
    for key in ("Linux-refs/heads/main", "deps-..\\win\\x"):
        save_v2(c, key, key.encode())
        assert restore_v2(c, key) == (key, key.encode())
    assert restore_v2(c, "other", ["Linux-refs/"]) == ("Linux-refs/heads/main", b"Linux-refs/heads/main")
    legacy = c.post("/_apis/artifactcache/caches", json={"key": "v1-refs/heads/x", "version": VERSION, "cacheSize": 2})
    assert legacy.status_code == 201, legacy.text


def test_legacy_chunks_concurrent_and_out_of_order(serve: Any, store: BlobStore) -> None:
    srv = serve(store)
    c = client(srv)
    data = os.urandom(3 * 5 * 1024 * 1024 + 123)
    chunk = 5 * 1024 * 1024
    r = c.post("/_apis/artifactcache/caches", json={"key": "legacy-1", "version": VERSION, "cacheSize": len(data)})
    assert r.status_code == 201, r.text
    cache_id = r.json()["cacheId"]
    starts = list(range(0, len(data), chunk))[::-1]
    errors: list[int] = []

    def send(start: int) -> None:
        end = min(start + chunk, len(data)) - 1
        resp = client(srv).patch(
            f"/_apis/artifactcache/caches/{cache_id}",
            content=data[start : end + 1],
            headers={"Content-Range": f"bytes {start}-{end}/*", "Content-Type": "application/octet-stream"},
        )
        if resp.status_code != 204:
            errors.append(resp.status_code)

    threads = [threading.Thread(target=send, args=(s,)) for s in starts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert c.post(f"/_apis/artifactcache/caches/{cache_id}", json={"size": len(data)}).status_code == 204
    hit = c.get("/_apis/artifactcache/cache", params={"keys": "nomatch,legacy-", "version": VERSION})
    assert hit.status_code == 200
    assert hit.json()["cacheKey"] == "legacy-1"
    assert httpx.get(hit.json()["archiveLocation"]).content == data


def test_legacy_miss_is_204(serve: Any) -> None:
    c = client(serve())
    assert c.get("/_apis/artifactcache/cache", params={"keys": "absent", "version": VERSION}).status_code == 204


def test_matching_exact_then_prefix_newest_and_version(serve: Any) -> None:
    c = client(serve())
    save_v2(c, "npm-a", b"old")
    time.sleep(0.01)
    save_v2(c, "npm-b", b"new")
    save_v2(c, "npm", b"exact")
    assert restore_v2(c, "npm") == ("npm", b"exact")
    assert restore_v2(c, "yarn", ["npm-"]) == ("npm-b", b"new")
    assert restore_v2(c, "npm", version="b" * 64) is None


def test_scopes_branch_reads_own_and_default_not_others(serve: Any) -> None:
    srv = serve()
    main = client(srv, token(ref="refs/heads/main"))
    feat = client(srv, token(ref="refs/heads/feat", default_ref="refs/heads/main"))
    other = client(srv, token(ref="refs/heads/other", default_ref="refs/heads/main"))
    save_v2(main, "k-main", b"from main")
    save_v2(feat, "k-feat", b"from feat")
    assert restore_v2(feat, "k-main") == ("k-main", b"from main")
    assert restore_v2(feat, "k-feat") == ("k-feat", b"from feat")
    assert restore_v2(other, "k-feat") is None
    assert restore_v2(main, "k-feat") is None
    # The feature branch may save its own entry under a key main already has; main keeps its own.
    save_v2(feat, "k-main", b"feat copy")
    assert restore_v2(feat, "k-main") == ("k-main", b"feat copy")
    assert restore_v2(main, "k-main") == ("k-main", b"from main")


def test_other_org_and_repo_cannot_read_or_list(serve: Any) -> None:
    srv = serve()
    save_v2(client(srv), "secret-key", b"acme bytes")
    evil = client(srv, token(org="evil", repo="web"))
    assert restore_v2(evil, "secret-key") is None
    assert evil.get("/_apis/artifactcache/caches", params={"key": "secret-key"}).json()["totalCount"] == 0
    assert restore_v2(client(srv, token(repo="api")), "secret-key") is None
    usage = evil.get("/usage").json()["orgs"]
    assert list(usage) == ["evil"]


def test_concurrent_reservations_one_wins(serve: Any) -> None:
    srv = serve()
    results: list[int] = []
    barrier = threading.Barrier(8)

    def reserve() -> None:
        c = client(srv)
        barrier.wait()
        results.append(create(c, "race").status_code)

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 7
    legacy = client(srv).post("/_apis/artifactcache/caches", json={"key": "race", "version": VERSION})
    assert legacy.status_code == 409
    assert "another job" in legacy.json()["message"]


def test_finalized_entry_is_immutable(serve: Any) -> None:
    c = client(serve())
    save_v2(c, "immutable", b"one")
    again = create(c, "immutable")
    assert again.status_code == 409
    assert again.json()["code"] == "already_exists"
    assert restore_v2(c, "immutable") == ("immutable", b"one")


@pytest.mark.parametrize(
    "key",
    ["bad\nkey", "bad\x00key", "tab\tkey", "a,b", "x" * 513, ""],
)
def test_bad_keys_are_400_and_nothing_written(serve: Any, key: str, settings: Any) -> None:
    srv = serve()
    c = client(srv)
    r = create(c, key)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    legacy = c.post("/_apis/artifactcache/caches", json={"key": key, "version": VERSION})
    assert legacy.status_code == 400
    assert c.get("/usage").json()["orgs"]["acme"]["entries"] == 0
    assert not list((settings.cache_storage_path / "uploads").iterdir())


def test_bad_version_and_malformed_bodies(serve: Any) -> None:
    c = client(serve())
    assert create(c, "k", version="../x").status_code == 400
    assert c.post(f"{TWIRP}/CreateCacheEntry", content=b"{not json").status_code == 400
    assert c.post(f"{TWIRP}/CreateCacheEntry", json=["list"]).status_code == 400
    assert c.post(f"{TWIRP}/CreateCacheEntry", json={"key": 5, "version": VERSION}).status_code == 400
    assert c.post(f"{TWIRP}/NoSuchMethod", json={}).status_code == 404
    too_many = c.post(
        f"{TWIRP}/GetCacheEntryDownloadURL",
        json={"key": "k", "restore_keys": [f"r{i}" for i in range(10)], "version": VERSION},
    )
    assert too_many.status_code == 400


def test_oversize_entries_refused(serve: Any, store: BlobStore) -> None:
    srv = serve(store, cache_max_entry_bytes=1024)
    c = client(srv)
    legacy = c.post("/_apis/artifactcache/caches", json={"key": "big", "version": VERSION, "cacheSize": 4096})
    assert legacy.status_code == 413
    url = create(c, "big2").json()["signed_upload_url"]
    put = httpx.put(url, content=b"x" * 2048, headers={"x-ms-blob-type": "BlockBlob"})
    assert put.status_code == 413
    assert put.headers["x-ms-error-code"]
    assert restore_v2(c, "big2") is None


def test_finalize_with_wrong_size_drops_entry(serve: Any, store: BlobStore) -> None:
    c = client(serve(store))
    url = create(c, "sized").json()["signed_upload_url"]
    assert httpx.put(url, content=b"12345", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    fin = c.post(f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": "sized", "version": VERSION, "size_bytes": "999"})
    assert fin.status_code == 400
    assert "999" in fin.json()["msg"]
    assert restore_v2(c, "sized") is None
    # The key is free again: a correct save succeeds.
    save_v2(c, "sized", b"12345")


def test_legacy_commit_wrong_size_and_chunk_past_end(serve: Any) -> None:
    c = client(serve())
    cache_id = c.post("/_apis/artifactcache/caches", json={"key": "lg", "version": VERSION, "cacheSize": 10}).json()[
        "cacheId"
    ]
    past = c.patch(
        f"/_apis/artifactcache/caches/{cache_id}", content=b"x" * 11, headers={"Content-Range": "bytes 0-10/*"}
    )
    assert past.status_code == 416
    bad_range = c.patch(f"/_apis/artifactcache/caches/{cache_id}", content=b"x", headers={"Content-Range": "nonsense"})
    assert bad_range.status_code == 400
    short = c.patch(
        f"/_apis/artifactcache/caches/{cache_id}", content=b"x" * 4, headers={"Content-Range": "bytes 0-9/*"}
    )
    assert short.status_code == 400
    ok = c.patch(f"/_apis/artifactcache/caches/{cache_id}", content=b"x" * 10, headers={"Content-Range": "bytes 0-9/*"})
    assert ok.status_code == 204
    assert c.post(f"/_apis/artifactcache/caches/{cache_id}", json={"size": 12}).status_code == 400
    assert c.get("/_apis/artifactcache/cache", params={"keys": "lg", "version": VERSION}).status_code == 204


def test_tokens_forged_expired_wrong_scope(serve: Any) -> None:
    srv = serve()
    forged = tokens.mint("not-the-secret-" * 3, scope="cache", subject="acme", ttl_seconds=60, org="acme")
    expired_claims = {"org": "acme"}
    import jwt

    now = int(time.time())
    expired = jwt.encode(
        {"sub": "acme", "scope": "cache", "iat": now - 100, "exp": now - 60, **expired_claims},
        SECRET,
        algorithm="HS256",
    )
    wrong_scope = tokens.mint(SECRET, scope="agent", subject="acme", ttl_seconds=60)
    for tok, status in ((forged, 401), (expired, 401), (wrong_scope, 403)):
        r = httpx.post(
            f"{srv.url}{TWIRP}/CreateCacheEntry",
            json={"key": "k", "version": VERSION},
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == status, r.text
    assert (
        httpx.get(f"{srv.url}/_apis/artifactcache/cache", params={"keys": "k", "version": VERSION}).status_code == 401
    )
    assert client(srv).get("/usage").json()["orgs"]["acme"]["entries"] == 0


def test_signed_urls_cannot_be_forged_or_reused_for_writes(serve: Any) -> None:
    srv = serve()
    c = client(srv)
    save_v2(c, "signed", b"payload")
    url = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "signed", "version": VERSION}).json()[
        "signed_download_url"
    ]
    assert httpx.put(url.replace("sp=r", "sp=w"), content=b"evil").status_code in (401, 403)
    assert httpx.get(url.replace("/blob/smith/", "/blob/smith/9").split("?")[0]).status_code == 403
    other_id = url.replace(f"/{url.split('/')[-1].split('?')[0]}?", "/99999?")
    assert httpx.get(other_id).status_code == 401
    expired = signing.signed_url(srv.url, SECRET, "r", 1, -10)
    assert httpx.get(expired).status_code == 401
    assert httpx.get(url).content == b"payload"
