"""A ``BlobStore`` in a local directory.

Layout under ``root``: ``uploads/<upload_id>/<part>`` for parts of an upload in progress, ``blobs/<key>`` for
finished blobs. No saved byte is copied a second time (a join on ext4 is a full copy: every save wrote twice):

- a part written at an offset (a legacy chunk, ``offset=``) goes straight into ``uploads/<id>/.ranged`` with
  ``pwrite``, next to a marker file that records its size; ``complete`` checks the markers cover the file from
  byte 0 without gaps, trims it to that size and renames it to ``blobs/<key>``;
- named parts (v2 blocks), and legacy chunks that start at a multiple of 2 MiB (the clients' 32 MiB chunks do),
  are written past the page cache where the filesystem allows (``directio.py``; off with ``direct=False``);
- one named part (a single-shot upload) is renamed to ``blobs/<key>``;
- several named parts (Azure blocks, whose order is known only from the block list at commit) stay as they
  are: ``complete`` writes ``.manifest`` (the parts in the block list's order, with their sizes) into the
  upload's directory, drops the parts the list does not name and renames the directory to ``blobs/<key>``;
  ``read`` serves the parts in the manifest's order.

Each ``complete`` ends in one rename: a crash leaves either no blob or a whole one, and at worst an
``uploads/`` directory that ``stale_uploads`` reports for cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from smith.adapters.directio import BUFFER, write_direct
from smith.errors import InvalidInput, NotFound, SmithError, Unavailable

READ_CHUNK = 4 * 1024 * 1024
WRITE_BATCH = 4 * 1024 * 1024
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
MANIFEST = ".manifest"
RANGED = ".ranged"
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _safe(part: str, what: str) -> str:
    if not _SAFE.match(part) or part in (".", ".."):
        raise InvalidInput(f"bad {what} name {part!r}")
    return part


def _os_error(exc: OSError, what: str) -> SmithError:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what} not found")
    return Unavailable(f"filesystem error on {what}: {exc.strerror or exc}")


class OpenRange:
    """Bytes of a blob in files opened already (``smith.ports.FileRange``): ``spans`` are (descriptor, first byte,
    end byte exclusive), read in order by ``chunks()``; ``aclose()`` closes the descriptors once."""

    def __init__(self, key: str, spans: list[tuple[int, int, int]]) -> None:
        self.key = key
        self.spans = spans

    async def chunks(self) -> AsyncIterator[bytes]:
        for fd, pos, stop in self.spans:
            while pos < stop:
                chunk = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, stop - pos), pos)
                if not chunk:
                    raise Unavailable(f"blob {self.key} is shorter than its manifest says")
                pos += len(chunk)
                yield chunk

    async def aclose(self) -> None:
        spans, self.spans = self.spans, []
        for fd, _, _ in spans:
            with contextlib.suppress(OSError):
                os.close(fd)


class FilesystemBlobStore:
    name = "filesystem"

    def __init__(self, root: Path, *, direct: bool = True) -> None:
        self.root = Path(root)
        self.direct = direct  # named parts (v2 blocks) skip the page cache (O_DIRECT): directio.py
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

    async def write_part(
        self, upload_id: str, part: str, chunks: AsyncIterator[bytes], size: int, offset: int | None = None
    ) -> int:
        directory = self._upload(upload_id)
        final = directory / _safe(part, "part")
        tmp = directory / f".{part}.{uuid.uuid4().hex}.tmp"
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            if offset is None:
                fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            else:
                fd = await asyncio.to_thread(os.open, directory / RANGED, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _os_error(exc, "upload") from exc
        written = 0
        try:
            try:
                if offset is not None:
                    await asyncio.to_thread(_preallocate, fd, offset, size)
                if self.direct and (offset or 0) % BUFFER == 0:  # (a legacy chunk's own descriptor: see directio)
                    written = await write_direct(fd, chunks, size, write_all, offset or 0)
                else:
                    written = await write_chunks(fd, chunks, size, offset)
            finally:
                os.close(fd)
            if offset is not None:  # the marker: this chunk's bytes are all in .ranged
                tmp.write_text(f"{offset} {written}")
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
            if (directory / RANGED).exists():
                size = _trim_ranged(directory, paths)
                os.rename(directory / RANGED, target)
            elif len(paths) == 1:
                size = paths[0].stat().st_size
                os.rename(paths[0], target)
            else:
                size = _write_manifest(directory, paths)
                os.rename(directory, target)
                return size
        except OSError as exc:
            raise _os_error(exc, "upload part") from exc
        shutil.rmtree(directory, ignore_errors=True)
        return size

    async def abort(self, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._upload(upload_id), True)

    async def size(self, key: str) -> int | None:
        try:
            return await asyncio.to_thread(_blob_size, self._blob(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "blob") from exc

    async def open_range(self, key: str, start: int = 0, end: int | None = None) -> OpenRange:
        """Every file holding bytes ``start..end`` of blob ``key``, opened now: a blob deleted while it is being
        sent (evicted, purged) is still sent whole from them. The caller closes them (``aclose``)."""
        return await self._opened(key, start, end)

    async def _opened(self, key: str, start: int, end: int | None) -> OpenRange:
        try:
            return OpenRange(key, await asyncio.to_thread(_open_range, self._blob(key), start, end))
        except OSError as exc:
            raise _os_error(exc, "blob") from exc

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Every file the range needs is opened before the first byte (``open_range``)."""
        opened = await self._opened(key, start, end)
        try:
            async for chunk in opened.chunks():
                yield chunk
        finally:
            await opened.aclose()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(_remove, self._blob(key))

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


async def write_chunks(fd: int, chunks: AsyncIterator[bytes], size: int, offset: int | None = None) -> int:
    """Write a part of exactly ``size`` bytes from ``chunks`` to ``fd`` (at ``offset`` with ``pwrite``, else at
    the file position); ``InvalidInput`` if it is longer or shorter.

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
            await asyncio.to_thread(write_all, fd, batch, _at(offset, written - batched))
            batch, batched = [], 0
    if batch:
        await asyncio.to_thread(write_all, fd, batch, _at(offset, written - batched))
    if written != size:
        raise InvalidInput(f"part ended after {written} of its declared {size} bytes")
    return written


def _at(offset: int | None, done: int) -> int | None:
    return None if offset is None else offset + done


def write_all(fd: int, chunks: Sequence[bytes | memoryview], offset: int | None = None) -> None:
    """Write ``chunks`` to ``fd`` in as few system calls as the kernel takes them (``writev``/``pwritev``, at most
    ``IOV_MAX`` buffers each): at ``offset``, else at the file position."""
    views = [memoryview(c) for c in chunks if c]
    while views:
        batch = views[:_IOV_MAX]
        n = os.writev(fd, batch) if offset is None else os.pwritev(fd, batch, offset)
        if offset is not None:
            offset += n
        while n:  # drop what was written: whole buffers, then the written head of the next one
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0], n = views[0][n:], 0


def _preallocate(fd: int, offset: int, size: int) -> None:
    """Reserve a chunk's blocks in one extent where the filesystem can (ext4, XFS); a hint, never an error."""
    if size and hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, offset, size)


def _trim_ranged(directory: Path, paths: list[Path]) -> int:
    """The size of an upload written at offsets, whose markers must cover ``.ranged`` from byte 0 without gaps;
    the file is cut to it (a chunk that failed half-way may have written past the end)."""
    size = 0
    for p in paths:
        try:
            start, length = (int(x) for x in p.read_text().split())
        except (ValueError, UnicodeDecodeError) as exc:
            raise OSError(f"{p.name} is not a chunk written at an offset") from exc
        if start != size:
            raise OSError(f"chunk at {start} does not follow byte {size}")
        size += length
    os.truncate(directory / RANGED, size)
    return size


def _write_manifest(directory: Path, paths: list[Path]) -> int:
    """Write the manifest of a blob kept as parts, drop the parts it does not list; returns the blob's size."""
    listed = {p.name for p in paths}
    manifest = [(p.name, p.stat().st_size) for p in paths]
    for other in directory.iterdir():
        if other.name not in listed:
            with contextlib.suppress(FileNotFoundError):
                other.unlink()
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return sum(n for _, n in manifest)


def _pieces(path: Path) -> list[tuple[Path, int, int]]:
    """``(file, first byte in the blob, length)`` of each file a blob is made of, in order."""
    if not path.is_dir():
        return [(path, 0, path.stat().st_size)]
    out = []
    begin = 0
    for name, length in json.loads((path / MANIFEST).read_text()):
        out.append((path / _safe(name, "part"), begin, int(length)))
        begin += int(length)
    return out


def _blob_size(path: Path) -> int:
    pieces = _pieces(path)
    return pieces[-1][1] + pieces[-1][2] if pieces else 0


def _open_range(path: Path, start: int, end: int | None) -> list[tuple[int, int, int]]:
    """``(descriptor, first byte, end byte exclusive)`` in each file holding bytes ``start..end`` of a blob."""
    pieces = _pieces(path)  # FileNotFoundError for a missing blob
    stop = pieces[-1][1] + pieces[-1][2] if end is None else end + 1
    spans: list[tuple[int, int, int]] = []
    try:
        for file, begin, length in pieces:
            lo, hi = max(start, begin), min(stop, begin + length)
            if lo < hi:
                spans.append((os.open(file, os.O_RDONLY), lo - begin, hi - begin))
    except BaseException:
        for fd, _, _ in spans:
            os.close(fd)
        raise
    return spans


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
