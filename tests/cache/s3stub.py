"""A recording S3 endpoint over HTTPS that refuses what R2 and an older MinIO refuse.

It keeps objects in memory and records every request's method, path and headers. Refused like those stores
refuse them: uploads with an ``aws-chunked`` body or a checksum trailer (501 NotImplemented, as R2) and
``DeleteObjects`` without ``Content-MD5`` (400 MissingContentMD5, as MinIO before 2025-01).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA bundle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class StrictS3:
    objects: dict[str, bytes] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    require_md5: bool = True  # DeleteObjects without Content-MD5 is refused (MinIO before 2025-01)
    delete_errors: set[str] = field(default_factory=set)  # keys DeleteObjects reports under <Errors>

    def requests(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method]


def _xml_error(handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def make_handler(state: StrictS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _record(self) -> tuple[str, dict[str, list[str]]]:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.seen.append(Seen(self.command, unquote(url.path), query, headers))
            return unquote(url.path), query

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _ok(self, body: bytes = b"", status: int = 200, **headers: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            path, _ = self._record()
            key = path.split("/", 2)[2] if path.count("/") >= 2 else ""
            if key and key not in state.objects:
                self._ok(status=404)
            else:
                self._ok()

        def do_PUT(self) -> None:
            path, _ = self._record()
            chunked = "aws-chunked" in self.headers.get("content-encoding", "")
            body = self._body()
            if chunked or self.headers.get("x-amz-trailer") or self.headers.get("content-length") is None:
                state.refused.append(f"PUT {path}: aws-chunked / checksum trailer / no Content-Length")
                return _xml_error(self, 501, "NotImplemented")
            source = self.headers.get("x-amz-copy-source")
            if source:
                body = state.objects[unquote(source).lstrip("/").split("/", 1)[1]]
            state.objects[path.split("/", 2)[2]] = body
            etag = f'"{hashlib.md5(body).hexdigest()}"'  # noqa: S324 - S3's ETag
            if source:
                xml = f"<?xml version='1.0'?><CopyObjectResult><ETag>{etag}</ETag></CopyObjectResult>"
                return self._ok(xml.encode(), Content_Type="application/xml")
            self._ok(ETag=etag)

        def do_GET(self) -> None:
            path, query = self._record()
            if "list-type" in query:
                prefix = query.get("prefix", [""])[0]
                items = "".join(
                    f"<Contents><Key>{k}</Key><Size>{len(v)}</Size>"
                    "<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>"
                    for k, v in sorted(state.objects.items())
                    if k.startswith(prefix)
                )
                xml = (
                    f"<?xml version='1.0'?><ListBucketResult><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
                )
                return self._ok(xml.encode(), Content_Type="application/xml")
            data = state.objects.get(path.split("/", 2)[2])
            if data is None:
                return _xml_error(self, 404, "NoSuchKey")
            self._ok(data, ETag='"x"')

        def do_DELETE(self) -> None:
            path, _ = self._record()
            state.objects.pop(path.split("/", 2)[2], None)
            self._ok(status=204)

        def do_POST(self) -> None:
            _, query = self._record()
            body = self._body()
            if "delete" not in query:
                return _xml_error(self, 501, "NotImplemented")
            if state.require_md5 and not self.headers.get("content-md5"):
                state.refused.append("DeleteObjects without Content-MD5")
                return _xml_error(self, 400, "MissingContentMD5")
            errors = ""
            for el in ElementTree.fromstring(body).iter():  # noqa: S314 - our own client's request
                if el.tag.endswith("Key") and el.text:
                    if el.text in state.delete_errors:
                        errors += f"<Error><Key>{el.text}</Key><Code>InternalError</Code><Message>x</Message></Error>"
                    else:
                        state.objects.pop(el.text, None)
            xml = f"<?xml version='1.0'?><DeleteResult>{errors}</DeleteResult>"
            self._ok(xml.encode(), Content_Type="application/xml")

    return Handler


class StrictS3Server:
    def __init__(self, directory: Path) -> None:
        self.state = StrictS3()
        self.cert, key = self_signed(directory)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StrictS3Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
