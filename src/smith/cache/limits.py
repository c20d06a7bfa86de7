"""The cache server's HTTP protocol: ``smith.zerocopy``'s, plus a limit uvicorn does not set by itself: the size
of a request's head (request line + headers).

uvicorn picks the httptools parser when it is installed, and that parser buffers a header of any size (a
128 MiB header took 19 s and doubled the server's memory). ``http_protocol(limit)`` is uvicorn's httptools
protocol with a cap: once more than ``limit`` bytes arrived and the head is still not complete, or a whole head
(its target and header fields) that came in one read is larger, the server answers ``431 Request Header Fields
Too Large`` and closes the connection; the app never sees the request. Memory stays within the limit plus one
socket read.
"""

from __future__ import annotations

from typing import Any

from smith.zerocopy import BulkProtocol

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\nconnection: close\r\n\r\n"
    b"request headers are too large.\r\n"
)


class LimitedHttpToolsProtocol(BulkProtocol):
    max_head_bytes = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # bytes received since the head began (a head still coming in is cut off by it)
        self._head_size = 0  # the request line's target and the header fields the parser gave (a whole head)
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_size > self.max_head_bytes:  # a whole head in one read: the app never sees it
            self._refuse()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()


def http_protocol(max_head_bytes: int) -> type[LimitedHttpToolsProtocol]:
    return type("CacheHttpProtocol", (LimitedHttpToolsProtocol,), {"max_head_bytes": max_head_bytes})


def uvicorn_options(max_head_bytes: int) -> dict[str, Any]:
    """What `smith cache serve` (and the tests' server) pass to ``uvicorn.Config`` besides host and port: the
    protocol, and asyncio's event loop, which can ``sendfile`` a download (``smith.zerocopy``; uvloop cannot)."""
    return {"http": http_protocol(max_head_bytes), "h11_max_incomplete_event_size": max_head_bytes, "loop": "asyncio"}
