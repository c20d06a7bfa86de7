"""A ``BlobStore`` in a local directory.

Layout under ``root``: ``blobs/<key>`` for finished blobs, ``uploads/<upload_id>/<part>`` for parts of an
upload in progress. ``complete`` writes the joined blob to a temporary file beside its final place (with
``copy_file_range``, so the bytes stay in the kernel) and renames it into place: a crash leaves either no blob
or a whole one, and at worst an ``uploads/`` directory that ``stale_uploads`` reports for cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from smith.errors import InvalidInput, NotFound, SmithError, Unavailable

READ_CHUNK = 4 * 1024 * 1024
WRITE_BATCH = 4 * 1024 * 1024
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def _safe(part: str, what: str) -> str:
    if not _SAFE.match(part) or part in (".", ".."):
        raise InvalidInput(f"bad {what} name {part!r}")
    return part


def _os_error(exc: OSError, what: str) -> SmithError:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what} not found")
    return Unavailable(f"filesystem error on {what}: {exc.strerror or exc}")


class FilesystemBlobStore:
    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.uploads = self.root / "uploads"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def _blob(self, key: str) -> Path:
        parts = key.split("/")
        for p in parts:
            _safe(p, "blob key segment")
        return self.blobs.joinpath(*parts)

    def _upload(self, upload_id: str) -> Path:
        return self.uploads / _safe(upload_id, "upload")

    async def write_part(self, upload_id: str, part: str, chunks: AsyncIterator[bytes], size: int) -> int:
        directory = self._upload(upload_id)
        final = directory / _safe(part, "part")
        tmp = directory / f".{part}.{uuid.uuid4().hex}.tmp"
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise _os_error(exc, "upload") from exc
        written = 0
        try:
            try:
                written = await write_chunks(fd, chunks, size)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            raise _os_error(exc, "upload part") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return written

    async def complete(self, upload_id: str, parts: list[str], key: str) -> int:
        return await asyncio.to_thread(self._complete, upload_id, parts, key)

    def _complete(self, upload_id: str, parts: list[str], key: str) -> int:
        directory = self._upload(upload_id)
        target = self._blob(key)
        paths = [directory / _safe(p, "part") for p in parts]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if len(paths) == 1:
                size = paths[0].stat().st_size
                os.replace(paths[0], target)
            else:
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
                try:
                    with open(tmp, "wb") as out:
                        for p in paths:
                            with open(p, "rb") as src:
                                _copy(src.fileno(), out.fileno(), os.fstat(src.fileno()).st_size)
                    size = tmp.stat().st_size
                    os.replace(tmp, target)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
        except OSError as exc:
            raise _os_error(exc, "upload part") from exc
        shutil.rmtree(directory, ignore_errors=True)
        return size

    async def abort(self, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._upload(upload_id), True)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._blob(key).stat)).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "blob") from exc

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._blob(key)
        try:
            f = await asyncio.to_thread(open, path, "rb", buffering=0)
        except OSError as exc:
            raise _os_error(exc, "blob") from exc
        try:
            remaining = (end + 1 - start) if end is not None else None
            f.seek(start)
            while remaining is None or remaining > 0:
                n = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(f.read, n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._blob(key).unlink)

    async def stale_uploads(self, older_than: float) -> list[str]:
        def scan() -> list[str]:
            cutoff = time.time() - older_than
            out = []
            for d in self.uploads.iterdir():
                try:
                    newest = max([d.stat().st_mtime, *(p.stat().st_mtime for p in d.iterdir())])
                except OSError:
                    continue
                if newest < cutoff:
                    out.append(d.name)
            return out

        return await asyncio.to_thread(scan)

    async def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"blob directory {self.root} is not writable")

    async def aclose(self) -> None:
        return None


async def write_chunks(fd: int, chunks: AsyncIterator[bytes], size: int) -> int:
    """Write a part of exactly ``size`` bytes from ``chunks`` to ``fd``; ``InvalidInput`` if it is longer or shorter.

    The server's small body chunks are batched so each thread hop writes a few MiB.
    """
    written = 0
    batch: list[bytes] = []
    batched = 0
    async for chunk in chunks:
        written += len(chunk)
        if written > size:
            raise InvalidInput(f"part is longer than its declared {size} bytes")
        batch.append(chunk)
        batched += len(chunk)
        if batched >= WRITE_BATCH:
            await asyncio.to_thread(write_all, fd, batch)
            batch, batched = [], 0
    if batch:
        await asyncio.to_thread(write_all, fd, batch)
    if written != size:
        raise InvalidInput(f"part ended after {written} of its declared {size} bytes")
    return written


def write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _copy(src: int, dst: int, size: int) -> None:
    """Append ``size`` bytes of ``src`` to ``dst`` inside the kernel where it can (reflinks on XFS/btrfs)."""
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src, dst, size - offset, offset)
        except OSError:
            n = 0
        if n == 0:  # not supported here: copy through user space
            chunk = os.pread(src, min(READ_CHUNK, size - offset), offset)
            if not chunk:
                raise OSError(f"part shrank while being joined (at {offset} of {size})")
            write_all(dst, [chunk])
            n = len(chunk)
        offset += n
