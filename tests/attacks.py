"""Raw-socket clients for the resource attacks of issue 9: bodies nobody asked for, connections that never finish."""

from __future__ import annotations

import select
import socket
from urllib.parse import urlsplit


def push_body(url: str, path: str, size: int, headers: dict[str, str] | None = None) -> tuple[int | None, int]:
    """POST ``size`` bytes (Content-Length declared) as fast as the server takes them, stopping once it answers
    or hangs up. Returns (status or None if the connection was reset before an answer could be read, bytes the
    server pulled from us; the kernel's socket buffers hold a few MB of that without the server reading it)."""
    u = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {size}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        s.sendall(head.encode())
        s.setblocking(False)
        while sent < size:
            readable, writable, _ = select.select([s], [s], [], 30)
            if readable or not writable:
                break  # an answer (or a hang-up) before the body was all sent; or 30 s of nothing
            try:
                sent += s.send(chunk[: size - sent])
            except (BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        answer = b""
        try:
            while b"\r\n" not in answer:
                got = s.recv(4096)
                if not got:
                    break
                answer += got
        except ConnectionResetError:
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent
