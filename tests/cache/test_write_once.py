"""A save writes each byte of the entry once: the files chunks and blocks were written to become the blob
(no join step copies them), on the filesystem store, over real HTTP with both protocols."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from smith.adapters import filesystem
from smith.adapters.filesystem import FilesystemBlobStore
from tests.cache.conftest import client
from tests.cache.test_protocol import TWIRP, VERSION, create

MIB = 1024 * 1024


def inodes(root: Path) -> dict[int, int]:
    """inode -> size of every regular file under ``root``."""
    return {p.stat().st_ino: p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of entry data the store wrote, one number per write."""
    counts: list[int] = []
    real = filesystem.write_all

    def counting(fd: int, chunks: list[bytes], offset: int | None = None) -> None:
        counts.append(sum(len(c) for c in chunks))
        real(fd, chunks) if offset is None else real(fd, chunks, offset)

    monkeypatch.setattr(filesystem, "write_all", counting)
    return counts


def test_v1_chunks_are_written_in_place(serve: Any, tmp_path: Path, written: list[int]) -> None:
    store = FilesystemBlobStore(tmp_path / "fs")
    srv = serve(store)
    c = client(srv)
    data = os.urandom(3 * 5 * MIB + 77)
    r = c.post("/_apis/artifactcache/caches", json={"key": "once-v1", "version": VERSION, "cacheSize": len(data)})
    cache_id = r.json()["cacheId"]
    for start in reversed(range(0, len(data), 5 * MIB)):
        end = min(start + 5 * MIB, len(data)) - 1
        resp = c.patch(
            f"/_apis/artifactcache/caches/{cache_id}",
            content=data[start : end + 1],
            headers={"Content-Range": f"bytes {start}-{end}/*"},
        )
        assert resp.status_code == 204, resp.text
    before = inodes(store.uploads)
    assert c.post(f"/_apis/artifactcache/caches/{cache_id}", json={"size": len(data)}).status_code == 204
    after = inodes(store.blobs)
    assert list(after.values()) == [len(data)]  # one file, the one the chunks were written into
    assert set(after) <= set(before)
    assert sum(written) == len(data)
    hit = c.get("/_apis/artifactcache/cache", params={"keys": "once-v1", "version": VERSION})
    assert httpx.get(hit.json()["archiveLocation"]).content == data


def test_v2_blocks_become_the_blob_without_a_join(serve: Any, tmp_path: Path, written: list[int]) -> None:
    store = FilesystemBlobStore(tmp_path / "fs")
    srv = serve(store)
    c = client(srv)
    blocks = [os.urandom(2 * MIB), os.urandom(2 * MIB), os.urandom(MIB + 5)]
    url = create(c, "once-v2").json()["signed_upload_url"]
    ids = [base64.b64encode(f"blk-{i:04d}".encode()).decode() for i in range(4)]
    for i in (2, 0, 3, 1):  # out of order, and one block (3) the list leaves out
        body = blocks[i] if i < 3 else b"not in the list"
        assert httpx.put(f"{url}&comp=block&blockid={quote(ids[i])}", content=body).status_code == 201
    before = inodes(store.uploads)
    xml = "<BlockList>" + "".join(f"<Latest>{ids[i]}</Latest>" for i in range(3)) + "</BlockList>"
    assert httpx.put(f"{url}&comp=blocklist", content=xml).status_code == 201
    data = b"".join(blocks)
    fin = c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": "once-v2", "version": VERSION, "size_bytes": len(data)}
    )
    assert fin.json()["ok"], fin.text
    after = {ino: size for ino, size in inodes(store.blobs).items() if size >= MIB}
    assert sorted(after.values()) == sorted(len(b) for b in blocks)
    assert set(after) <= set(before)  # the very files the blocks were written to
    assert sum(written) == len(data) + len(b"not in the list")
    got = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "once-v2", "restore_keys": [], "version": VERSION})
    url = got.json()["signed_download_url"]
    assert httpx.get(url).content == data
    # a range across the block boundaries
    part = httpx.get(url, headers={"Range": f"bytes={2 * MIB - 3}-{4 * MIB + 2}"})
    assert part.status_code == 206
    assert part.content == data[2 * MIB - 3 : 4 * MIB + 3]


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_blob_kept_as_parts_reads_any_range_and_deletes(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    parts = {"a": b"0123", "b": b"", "c": b"456789", "d": b"ab"}
    for name, data in parts.items():
        await store.write_part("7", name, body(data), len(data))
    assert await store.complete("7", ["a", "b", "c", "a", "d"], "org/7") == 16
    whole = b"0123" + b"456789" + b"0123" + b"ab"
    assert await store.size("org/7") == len(whole)
    for start in range(len(whole)):
        for end in range(start, len(whole) + 2):
            got = b"".join([c async for c in store.read("org/7", start, end)])
            assert got == whole[start : end + 1], (start, end)
    assert b"".join([c async for c in store.read("org/7")]) == whole
    assert not (tmp_path / "uploads" / "7").exists()
    await store.delete("org/7")
    assert await store.size("org/7") is None


async def test_chunks_must_cover_the_file_from_zero(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.write_part("8", f"{4:020d}", body(b"late"), 4, offset=4)
    with pytest.raises(Exception, match="does not follow"):
        await store.complete("8", [f"{4:020d}"], "org/8")
    assert await store.size("org/8") is None


async def test_blob_deleted_while_sent_is_sent_whole(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(3)]
    for i, data in enumerate(parts):
        await store.write_part("9", f"p{i}", body(data), len(data))
    await store.complete("9", ["p0", "p1", "p2"], "org/9")
    stream = store.read("org/9", 1)
    first = await anext(stream)
    await store.delete("org/9")  # evicted while a download is under way
    assert not (tmp_path / "blobs" / "org" / "9").exists()
    rest = b"".join([c async for c in stream])
    assert first + rest == b"".join(parts)[1:]


def test_download_urls_use_the_placeholder_host(serve: Any, tmp_path: Path) -> None:
    """With ``cache_download_host`` the v2 and legacy download URLs name it (same port), upload URLs do not, and
    the server answers the parallel client's HEAD and 4 MiB ranges on them (reached here by address)."""
    srv = serve(FilesystemBlobStore(tmp_path / "fs"), cache_download_host="smith.blob.core.windows.net")
    c = client(srv)
    data = os.urandom(9 * MIB)
    r = create(c, "placeholder")
    upload = httpx.URL(r.json()["signed_upload_url"])
    assert upload.host == "127.0.0.1"
    assert httpx.put(str(upload), content=data, headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    fin = c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": "placeholder", "version": VERSION, "size_bytes": len(data)}
    )
    assert fin.json()["ok"]
    got = c.post(
        f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "placeholder", "restore_keys": [], "version": VERSION}
    )
    url = httpx.URL(got.json()["signed_download_url"])
    assert (url.host, url.port) == ("smith.blob.core.windows.net", upload.port)
    legacy = c.get("/_apis/artifactcache/cache", params={"keys": "placeholder", "version": VERSION})
    assert httpx.URL(legacy.json()["archiveLocation"]).host == "smith.blob.core.windows.net"
    direct = url.copy_with(host="127.0.0.1")
    assert httpx.head(direct).headers["content-length"] == str(len(data))
    segments = [
        httpx.get(direct, headers={"Range": f"bytes={o}-{o + 4 * MIB - 1}"}) for o in range(0, len(data), 4 * MIB)
    ]
    assert b"".join(s.content for s in segments) == data


def test_write_all_finishes_partial_gathered_writes(tmp_path: Path) -> None:
    """A batch goes out in gathered writes; a short write (a pipe takes 64 KiB at a time) resumes mid-buffer, empty
    chunks are skipped, and more buffers than one call takes (IOV_MAX) still all land, in order."""
    import threading

    chunks = [os.urandom(100_000) for _ in range(6)] + [b""] + [os.urandom(n % 7) for n in range(3000)]
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while data := os.read(r, MIB):
            got.extend(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        filesystem.write_all(w, chunks)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert bytes(got) == b"".join(chunks)


def test_write_all_at_an_offset_leaves_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 20)
    fd = os.open(path, os.O_WRONLY)
    try:
        filesystem.write_all(fd, [b"ab", b"", b"cde"], 10)
        filesystem.write_all(fd, [b"Z"] * 1500, 30)  # more buffers than one call takes, past the end
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10 + b"abcde" + b"x" * 5 + b"\0" * 10 + b"Z" * 1500
