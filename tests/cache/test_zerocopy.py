"""Downloads sent by the kernel (``sendfile``) and uploads handed on without copies (``smith.zerocopy``), through
the cache app under a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvloop

from smith import zerocopy
from smith.adapters.filesystem import FilesystemBlobStore, OpenRange
from smith.zerocopy import EXTENSION, Chunks, FilesResponse, loop_can_sendfile
from tests.cache.conftest import client
from tests.cache.test_protocol import TWIRP, VERSION, create, upload_blocks

MiB = 1024 * 1024


def save_blocks(c: httpx.Client, key: str, blocks: list[bytes]) -> str:
    """Save ``blocks`` (staged out of order) as one entry; its signed download URL."""
    upload_blocks(create(c, key).json()["signed_upload_url"], blocks, order=list(range(len(blocks)))[::-1])
    size = str(sum(map(len, blocks)))
    assert c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": key, "version": VERSION, "size_bytes": size}
    ).json()["ok"]
    url = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": key, "version": VERSION}).json()
    return str(url["signed_download_url"])


def settled(counts: list[int]) -> int:
    """The sum once the server thread has noted its last call (the client can have the bytes a moment before)."""
    deadline, total = time.monotonic() + 2, -1
    while sum(counts) != total and time.monotonic() < deadline:
        total = sum(counts)
        time.sleep(0.05)
    return sum(counts)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes each ``os.sendfile`` call sent (the server runs in this process)."""
    counts: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        counts.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    return counts


def test_downloads_and_ranges_across_blocks_are_sent_by_sendfile(serve: Any, tmp_path: Path, sent: list[int]) -> None:
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    blocks = [os.urandom(MiB + 7), os.urandom(2 * MiB), os.urandom(513)]
    data = b"".join(blocks)
    url = save_blocks(client(srv), "zc", blocks)
    sent.clear()
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert settled(sent) == len(data)  # every byte by the kernel, none read into the server
    for lo, hi in [(0, 0), (MiB, MiB + 7), (MiB + 3, 3 * MiB + 100), (len(data) - 513, len(data) - 1), (5, MiB * 3)]:
        sent.clear()
        part = httpx.get(url, headers={"x-ms-range": f"bytes={lo}-{hi}"})
        assert part.status_code == 206, (lo, hi)
        assert part.content == data[lo : hi + 1], (lo, hi)
        assert part.headers["content-range"] == f"bytes {lo}-{hi}/{len(data)}"
        assert settled(sent) == hi - lo + 1
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content


def test_keep_alive_connection_serves_download_after_download(serve: Any, tmp_path: Path) -> None:
    """The connection is usable after a sendfile answer: the next request on it is read and answered."""
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    data = os.urandom(3 * MiB)
    url = save_blocks(client(srv), "ka", [data[: 2 * MiB], data[2 * MiB :]])
    with httpx.Client() as c:
        for _ in range(3):
            assert c.get(url).content == data
            assert c.get(url, headers={"Range": "bytes=10-19"}).content == data[10:20]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_gone_mid_download_leaves_no_descriptor_open(serve: Any, tmp_path: Path) -> None:
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    data = os.urandom(24 * MiB)
    url = save_blocks(client(srv), "gone", [data[: 8 * MiB], data[8 * MiB : 16 * MiB], data[16 * MiB :]])
    httpx.get(url)  # warm: whatever the server opens once is open now
    before = _open_fds()
    parts = urlsplit(url)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    deadline = time.monotonic() + 10
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds() <= before  # the blob's files and the sockets are closed again
    assert httpx.get(url).content == data  # and the server still answers


def test_uploads_in_many_pieces_and_in_one_arrive_whole(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block sent in small pieces (several chunks wait for the app: joined once) and one sent at once, on one
    keep-alive connection, then the whole entry read back; the bodies went through ``Chunks``."""
    handed: list[int] = []
    as_bytes = Chunks.__bytes__

    def counted(self: Chunks) -> bytes:
        handed.append(len(self))
        return as_bytes(self)

    monkeypatch.setattr(Chunks, "__bytes__", counted)
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    c = client(srv)
    url = create(c, "pieces").json()["signed_upload_url"]
    small, big = os.urandom(300_000), os.urandom(5 * MiB)
    parts = urlsplit(url)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        for block_id, body, piece in (("YQ==", small, 1000), ("Yg==", big, len(big))):
            head = f"PUT {parts.path}?{parts.query}&comp=block&blockid={block_id} HTTP/1.1\r\nHost: x\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
            for i in range(0, len(body), piece):
                sock.sendall(body[i : i + piece])
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 201"), answer
    r = httpx.put(f"{url}&comp=blocklist", content="<BlockList><Latest>YQ==</Latest><Latest>Yg==</Latest></BlockList>")
    assert r.status_code == 201
    size = str(len(small) + len(big))
    assert c.post(
        f"{TWIRP}/FinalizeCacheEntryUpload", json={"key": "pieces", "version": VERSION, "size_bytes": size}
    ).json()["ok"]
    got = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "pieces", "version": VERSION}).json()
    assert httpx.get(got["signed_download_url"]).content == small + big
    assert sum(handed) >= len(small) + len(big)  # (the block list too)


def test_one_pending_chunk_is_handed_on_without_a_copy() -> None:
    first = os.urandom(1000)
    one = Chunks()
    one += first
    assert bytes(one) is first and len(one) == 1000
    two = Chunks(b"ab")
    two += b"cd"
    assert bytes(two) == b"abcd" and len(two) == 4


def _files(tmp_path: Path) -> tuple[list[tuple[int, int, int]], bytes]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"0123456789")
    b.write_bytes(b"abcdefghij")
    spans = [(os.open(a, os.O_RDONLY), 4, 10), (os.open(b, os.O_RDONLY), 0, 3)]
    return spans, b"456789abc"


async def _answer(scope: dict[str, Any], tmp_path: Path) -> tuple[list[dict[str, Any]], list[bool], bytes]:
    spans, expected = _files(tmp_path)
    messages: list[dict[str, Any]] = []
    closed: list[bool] = []

    async def send(message: Any) -> None:
        if message["type"] == EXTENSION:  # what a server does with it: read the span
            message = {**message, "data": os.pread(message["file"].fileno(), message["count"], message["offset"])}
        messages.append(message)

    class Watched(OpenRange):
        async def aclose(self) -> None:
            await super().aclose()
            closed.append(True)

    await FilesResponse(Watched("k", spans), 206, {"Content-Length": "9"})(scope, None, send)
    return messages, closed, expected


async def test_without_the_extension_the_files_are_read_in_chunks(tmp_path: Path) -> None:
    messages, closed, expected = await _answer({"type": "http", "method": "GET"}, tmp_path)
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 206
    assert (b"content-length", b"9") in messages[0]["headers"]
    assert {m["type"] for m in messages[1:]} == {"http.response.body"}
    assert b"".join(m["body"] for m in messages[1:]) == expected
    assert messages[-1]["more_body"] is False and closed == [True]


async def test_with_the_extension_each_span_is_one_zero_copy_send(tmp_path: Path) -> None:
    scope = {"type": "http", "method": "GET", "extensions": {EXTENSION: {}}}
    messages, closed, expected = await _answer(scope, tmp_path)
    zero = [m for m in messages if m["type"] == EXTENSION]
    assert [(m["offset"], m["count"]) for m in zero] == [(4, 6), (0, 3)]
    assert b"".join(m["data"] for m in zero) == expected
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False} and closed == [True]


async def test_head_sends_no_body_and_still_closes(tmp_path: Path) -> None:
    messages, closed, _ = await _answer({"type": "http", "method": "HEAD", "extensions": {EXTENSION: {}}}, tmp_path)
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"] and closed == [True]


def test_only_loops_that_can_sendfile_offer_the_extension() -> None:
    plain = asyncio.new_event_loop()
    fast = uvloop.new_event_loop()
    try:
        assert loop_can_sendfile(plain)
        assert not loop_can_sendfile(fast)  # uvloop: answered in chunks instead
        with pytest.raises(NotImplementedError):
            fast.run_until_complete(fast.sendfile(None, None))  # type: ignore[arg-type]
    finally:
        plain.close()
        fast.close()


def test_the_cache_server_runs_on_a_loop_that_can_sendfile() -> None:
    from smith.cache.limits import uvicorn_options

    options = uvicorn_options(32 * 1024)
    assert options["loop"] == "asyncio" and issubclass(options["http"], zerocopy.BulkProtocol)


def put_head(target: str, framing: str) -> bytes:
    return f"PUT {target} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """The status lines of the next ``count`` answers on ``sock`` (each answer's body read by Content-Length)."""
    buf, lines = b"", []
    while len(lines) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return lines
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines.append(head.split(b"\r\n")[0])
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        while len(buf) < length:
            buf += sock.recv(65536)
        buf = buf[length:]
    return lines


def test_a_body_taken_past_the_parser_ends_where_its_length_says(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the head is in, a block's body is taken from the socket reads as they are (not through the parser);
    exactly Content-Length bytes: a request pipelined right behind it, in the same read as the body's end, is
    answered, and the block holds exactly its bytes."""
    taken: list[int] = []
    take = zerocopy.BulkProtocol._take

    def counted(self: zerocopy.BulkProtocol, data: bytes) -> None:
        taken.append(len(data))
        take(self, data)

    monkeypatch.setattr(zerocopy.BulkProtocol, "_take", counted)
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    c = client(srv)
    url = create(c, "past").json()["signed_upload_url"]
    parts = urlsplit(url)
    body = os.urandom(3 * MiB + 11)
    head = put_head(f"{parts.path}?{parts.query}&comp=block&blockid=YQ==", f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head + body[:1000])
        time.sleep(0.1)  # the head and the body's start in one read: the rest comes past the parser
        sock.sendall(body[1000 : 2 * MiB])
        sock.sendall(body[2 * MiB :] + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answers(sock, 2) == [b"HTTP/1.1 201 Created", b"HTTP/1.1 200 OK"]
    assert len(body) - zerocopy.READ_SIZE <= sum(taken) <= len(body) - 1000  # (the first read's part: the parser)
    r = httpx.put(f"{url}&comp=blocklist", content="<BlockList><Latest>YQ==</Latest></BlockList>")
    assert r.status_code == 201
    fin = {"key": "past", "version": VERSION, "size_bytes": str(len(body))}
    assert c.post(f"{TWIRP}/FinalizeCacheEntryUpload", json=fin).json()["ok"]
    got = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "past", "version": VERSION}).json()
    assert httpx.get(got["signed_download_url"]).content == body


def test_a_body_answered_early_is_dropped_and_the_connection_goes_on(serve: Any, tmp_path: Path) -> None:
    """A block PUT whose signature is wrong is answered before its body is read; the body (taken past the parser)
    is dropped to its last byte and the next request on the connection is answered; a chunked body (no length:
    the parser reads it) is refused with 411 and the connection goes on too."""
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    url = create(client(srv), "early").json()["signed_upload_url"]
    parts = urlsplit(url)
    forged = parts.query.replace("sig=", "sig=x")
    body = os.urandom(2 * MiB)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(put_head(f"{parts.path}?{forged}&comp=block&blockid=YQ==", f"Content-Length: {len(body)}"))
        time.sleep(0.1)
        sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = _answers(sock, 2)
        assert first.startswith((b"HTTP/1.1 401", b"HTTP/1.1 403")) and second == b"HTTP/1.1 200 OK"
        chunked = put_head(f"{parts.path}?{parts.query}&comp=block&blockid=Yg==", "Transfer-Encoding: chunked")
        sock.sendall(chunked + b"5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answers(sock, 2) == [b"HTTP/1.1 411 Length Required", b"HTTP/1.1 200 OK"]


def test_content_length_with_transfer_encoding_smuggles_nothing(serve: Any, tmp_path: Path) -> None:
    """Both framings at once (the classic smuggling request): the body is not taken past the parser, and no request
    hidden in the body is answered."""
    srv = serve(FilesystemBlobStore(tmp_path / "blobs"))
    hidden = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /blob/smith/1?sp=w HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
            % len(body)
            + body
        )
        sock.shutdown(socket.SHUT_WR)
        answers = _answers(sock, 3)
    assert answers and answers[0].startswith(b"HTTP/1.1 4") and b"200" not in b"".join(answers), answers


def test_body_lengths_that_may_go_past_the_parser() -> None:
    assert zerocopy.body_length([(b"content-length", b"12")]) == 12
    assert zerocopy.body_length([(b"content-length", b"12"), (b"transfer-encoding", b"chunked")]) is None
    assert zerocopy.body_length([(b"content-length", b"12"), (b"content-length", b"12")]) is None
    assert zerocopy.body_length([(b"transfer-encoding", b"chunked")]) is None
    assert zerocopy.body_length([]) is None
