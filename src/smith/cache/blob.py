"""The signed blob URLs: the Azure Blob Storage subset the v2 client's Azure SDK uses, and plain downloads.

- ``PUT  /blob/smith/{id}?sp=w&...``                        whole blob in one request (entries <= 128 MiB)
- ``PUT  /blob/smith/{id}?sp=w&...&comp=block&blockid=B``   stage one block (64 MiB, 8 in parallel)
- ``PUT  /blob/smith/{id}?sp=w&...&comp=blocklist``         XML ``<BlockList><Latest>B</Latest>...``: join
- ``GET|HEAD /blob/smith/{id}?sp=r&...``                    the entry, with ``Range`` support (206/416)

Answers carry the headers the SDK reads (``ETag``, ``Last-Modified``, ``x-ms-request-id``); errors are Azure's
XML ``<Error><Code/><Message/></Error>`` with ``x-ms-error-code``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from email.utils import formatdate
from xml.etree import ElementTree

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from smith.cache import signing
from smith.cache.service import CacheService
from smith.errors import InvalidInput, PayloadTooLarge, SmithError
from smith.zerocopy import FilesResponse

router = APIRouter()

MAX_BLOCKLIST = 2 * 1024 * 1024
X_MS_VERSION = "2024-11-04"


class LengthRequired(SmithError):
    status_code = 411
    code = "MissingContentLengthHeader"


def azure_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{_xml(message)}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml", headers={"x-ms-error-code": code})


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headers(entry_id: int) -> dict[str, str]:
    return {
        "ETag": f'"0x{entry_id:X}{uuid.uuid4().hex[:8].upper()}"',
        "Last-Modified": formatdate(usegmt=True),
        "x-ms-request-id": str(uuid.uuid4()),
        "x-ms-version": X_MS_VERSION,
        "x-ms-request-server-encrypted": "false",
    }


def _check(request: Request, perm: str, entry_id: int) -> CacheService:
    service: CacheService = request.app.state.service
    q = request.query_params
    signing.check(service.settings.secret(), perm, entry_id, q.get("sp"), q.get("se"), q.get("sig"))
    return service


def _length(request: Request) -> int:
    raw = request.headers.get("content-length")
    if raw is None:
        raise LengthRequired("Content-Length is required")
    try:
        n = int(raw)
    except ValueError as exc:
        raise InvalidInput("bad Content-Length") from exc
    if n < 0:
        raise InvalidInput("bad Content-Length")
    return n


def block_part(block_id: str) -> str:
    """A block id (base64, as the SDK sends it) as a part name safe for paths and object keys."""
    try:
        raw = base64.b64decode(block_id, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("blockid must be base64") from exc
    if not raw or len(raw) > 64:
        raise InvalidInput("blockid must be 1-64 bytes")
    return "b" + raw.hex()


def parse_block_list(body: bytes) -> list[str]:
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - stdlib parser; no external entities are resolved
    except ElementTree.ParseError as exc:
        raise InvalidInput("block list is not valid XML") from exc
    if root.tag != "BlockList":
        raise InvalidInput("expected a <BlockList> document")
    ids = [el.text or "" for el in root if el.tag in ("Latest", "Uncommitted", "Committed")]
    return [block_part(i) for i in ids]


@router.put(signing.PATH + "/{entry_id}")
async def put_blob(request: Request, entry_id: int) -> Response:
    service = _check(request, "w", entry_id)
    comp = request.query_params.get("comp")
    if comp == "block":
        part = block_part(request.query_params.get("blockid", ""))
        await service.write_part(entry_id, part, request.stream(), _length(request))
    elif comp == "blocklist":
        if _length(request) > MAX_BLOCKLIST:
            raise PayloadTooLarge("block list is too large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BLOCKLIST:
                raise PayloadTooLarge("block list is too large")
        await service.assemble(entry_id, parse_block_list(body))
    elif comp is None:
        if request.headers.get("x-ms-blob-type", "BlockBlob") != "BlockBlob":
            raise InvalidInput("only block blobs are supported")
        await service.write_part(entry_id, "single", request.stream(), _length(request))
        await service.assemble(entry_id, ["single"])
    else:
        raise InvalidInput(f"comp={comp} is not supported")
    return Response(status_code=201, headers=_headers(entry_id))


@router.api_route(signing.PATH + "/{entry_id}", methods=["GET", "HEAD"])
async def get_blob(request: Request, entry_id: int) -> Response:
    service = _check(request, "r", entry_id)
    # Azure's x-ms-range wins over Range (the Azure SDK sends only x-ms-range)
    download = await service.open(entry_id, request.headers.get("x-ms-range") or request.headers.get("range"))
    headers = {
        "Content-Length": str(download.length),
        "Accept-Ranges": "bytes",
        "x-ms-blob-type": "BlockBlob",
        "Last-Modified": formatdate(download.entry.created_at, usegmt=True),
        # Stable per entry (entries are immutable); the Azure SDK refuses a download without one, and the v2
        # client uses the SDK once the URL's host ends in .blob.core.windows.net (SMITH_CACHE_DOWNLOAD_HOST).
        "ETag": f'"0x{download.entry.id:X}{int(download.entry.created_at * 1000):X}"',
    }
    status = 200
    if download.partial:
        status = 206
        headers["Content-Range"] = f"bytes {download.start}-{download.end}/{download.entry.size}"
    if request.method == "HEAD":
        await download.aclose()
        return Response(status_code=status, headers=headers)
    if download.files is not None:  # local files: sent by the kernel where the server can (smith.zerocopy)
        return FilesResponse(download.files, status, headers, "application/octet-stream")
    return StreamingResponse(download.body, status_code=status, headers=headers, media_type="application/octet-stream")
