"""Part writes that skip the page cache (``O_DIRECT``), for the filesystem store's named parts (v2 blocks) and
legacy chunks that start at a multiple of ``BUFFER`` (each written through its own descriptor, at its offset).

Writing a saved entry through the page cache cost the cache server more CPU than everything else in a save:
1.3-1.9 CPU seconds per GiB in the kernel on the bench machine (allocating and filling fresh page-cache pages),
against 0.4 for receiving the bytes; with ``O_DIRECT`` the same upload took 0.9-1.0 CPU seconds in all and 40%
less time through the real client. A restore then reads from the disk instead of memory, which the client's own
download speed hides; a save no longer pushes other entries out of the page cache.

The bytes are copied into page-aligned 2 MiB buffers (two per part: one filling while the other is written) and
written at 2 MiB-aligned file offsets, as ``O_DIRECT`` requires; the last partial buffer is written with
``O_DIRECT`` switched off again. Where the filesystem refuses ``O_DIRECT`` (tmpfs on older kernels, some network
filesystems), the same writes go through the page cache.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
from collections.abc import AsyncIterator, Callable, Sequence

from smith.errors import InvalidInput

BUFFER = 2 * 1024 * 1024  # one O_DIRECT write; 1, 2 and 4 MiB wrote equally fast on the bench machine
_POOL_MAX = 8
_pool: list[mmap.mmap] = []  # buffers kept between parts (fresh memory is slow to touch in VMs)

Writer = Callable[[int, Sequence[bytes | memoryview], int | None], None]


def set_direct(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on or off for ``fd``; False when the filesystem (or the platform) refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return True


def _take() -> mmap.mmap:
    return _pool.pop() if _pool else mmap.mmap(-1, BUFFER)


def _give(buffers: list[mmap.mmap]) -> None:
    for buf in buffers:
        if len(_pool) < _POOL_MAX:
            _pool.append(buf)
        else:
            buf.close()


def _flush(write: Writer, fd: int, buf: mmap.mmap, n: int, at: int) -> None:
    """Write the first ``n`` bytes of ``buf`` at file offset ``at``; a partial buffer (the last) without O_DIRECT."""
    view = memoryview(buf)[:n]
    try:
        if n % BUFFER:
            set_direct(fd, False)
        try:
            write(fd, [view], at)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not set_direct(fd, False):  # O_DIRECT wants another alignment here
                raise
            write(fd, [view], at)
    finally:
        view.release()


async def write_direct(fd: int, chunks: AsyncIterator[bytes], size: int, write: Writer, offset: int = 0) -> int:
    """Write a part of exactly ``size`` bytes from ``chunks`` to ``fd`` at ``offset`` (a multiple of ``BUFFER``:
    0 for a new file, a legacy chunk's place in its blob) past the page cache where the filesystem allows it, with
    ``write`` (``filesystem.write_all``); ``InvalidInput`` if the body is longer or shorter. ``fd`` is this part's
    own open file (its O_DIRECT flag is switched for it alone)."""
    if offset % BUFFER:
        raise ValueError(f"direct writes start at a multiple of {BUFFER}, not {offset}")
    await asyncio.to_thread(set_direct, fd, True)
    buffers = [_take(), _take()]
    current, fill, written, at = 0, 0, 0, offset  # at: where the buffer being filled goes in the file
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise InvalidInput(f"part is longer than its declared {size} bytes")
            view = memoryview(chunk)
            while view:
                n = min(len(view), BUFFER - fill)
                buffers[current][fill : fill + n] = view[:n]
                fill += n
                view = view[n:]
                if fill == BUFFER:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(asyncio.to_thread(_flush, write, fd, buffers[current], BUFFER, at))
                    current, fill, at = current ^ 1, 0, at + BUFFER
        if pending is not None:
            await pending
        if written != size:
            raise InvalidInput(f"part ended after {written} of its declared {size} bytes")
        if fill:
            await asyncio.to_thread(_flush, write, fd, buffers[current], fill, at)
    except BaseException:
        if pending is not None and not pending.done():  # a thread may still write from a buffer: not reused
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    _give(buffers)
    return written
