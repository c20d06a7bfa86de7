"""The filesystem store's v2 blocks are written past the page cache (O_DIRECT) where the filesystem allows it:
the same bytes land whatever the body's chunking and the part's size (aligned or not, smaller than a buffer,
empty), a body longer or shorter than declared is refused, and a filesystem that refuses O_DIRECT gets the same
bytes through the page cache."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smith.adapters import directio, filesystem
from smith.adapters.directio import BUFFER
from smith.adapters.filesystem import FilesystemBlobStore
from smith.errors import InvalidInput

needs_direct = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@needs_direct
@pytest.mark.parametrize(
    ("length", "chunk"),
    [(0, 1), (1, 1), (BUFFER, 65536), (BUFFER + 1, 65536), (3 * BUFFER - 7, 262_139), (2 * BUFFER, 3 * BUFFER)],
)
async def test_direct_part_holds_the_bytes(tmp_path: Path, length: int, chunk: int) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(length)
    assert await store.write_part("1", "b00", pieces(data, chunk), length) == length
    assert (tmp_path / "uploads" / "1" / "b00").read_bytes() == data


@needs_direct
async def test_direct_writes_bypass_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every full buffer is written with O_DIRECT on; only the partial last one without it."""
    seen: list[tuple[int, bool]] = []
    real = filesystem.write_all

    def spying(fd: int, chunks: Any, offset: int | None = None) -> None:
        seen.append((sum(len(c) for c in chunks), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        real(fd, chunks, offset)

    monkeypatch.setattr(filesystem, "write_all", spying)
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(2 * BUFFER + 100)
    await store.write_part("2", "b00", pieces(data, 100_000), len(data))
    if not seen[0][1]:
        pytest.skip(f"the filesystem under {tmp_path} refuses O_DIRECT")
    assert seen == [(BUFFER, True), (BUFFER, True), (100, False)]
    assert (tmp_path / "uploads" / "2" / "b00").read_bytes() == data


async def test_refused_direct_io_writes_through_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directio, "set_direct", lambda fd, on: False)  # as on a filesystem without O_DIRECT
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(BUFFER + 5)
    assert await store.write_part("3", "b00", pieces(data, 70_000), len(data)) == len(data)
    assert (tmp_path / "uploads" / "3" / "b00").read_bytes() == data


@pytest.mark.parametrize("sent", [BUFFER + 1, BUFFER - 1, 2 * BUFFER + 1])
async def test_direct_part_of_the_wrong_length_is_refused(tmp_path: Path, sent: int) -> None:
    store = FilesystemBlobStore(tmp_path)
    with pytest.raises(InvalidInput, match="declared"):
        await store.write_part("4", "b00", pieces(os.urandom(sent), 65536), BUFFER)
    assert not (tmp_path / "uploads" / "4" / "b00").exists()


async def test_page_cache_writes_when_direct_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[int] = []
    monkeypatch.setattr(directio, "set_direct", lambda fd, on: called.append(fd) or False)
    store = FilesystemBlobStore(tmp_path, direct=False)
    data = os.urandom(BUFFER + 3)
    await store.write_part("5", "b00", pieces(data, 65536), len(data))
    assert called == []
    assert (tmp_path / "uploads" / "5" / "b00").read_bytes() == data


@needs_direct
async def test_direct_write_refused_for_alignment_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that takes the O_DIRECT flag but refuses the writes (EINVAL: it wants another alignment): the
    part is written through the page cache from then on, whole."""
    import errno

    real = filesystem.write_all
    flags_seen: list[bool] = []

    def picky(fd: int, chunks: Any, offset: int | None = None) -> None:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        flags_seen.append(direct)
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, chunks, offset)

    monkeypatch.setattr(filesystem, "write_all", picky)
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(3 * BUFFER + 11)
    assert await store.write_part("6", "b00", pieces(data, 65536), len(data)) == len(data)
    assert (tmp_path / "uploads" / "6" / "b00").read_bytes() == data
    if flags_seen[0]:
        assert flags_seen == [True, False, False, False, False]


@needs_direct
async def test_legacy_chunks_at_aligned_offsets_are_written_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legacy chunks (written at their offsets into one file, in any order) that start at a multiple of the buffer
    go past the page cache, each buffer at its place; one at another offset goes through the page cache; the
    committed blob holds every byte."""
    seen: list[tuple[int | None, int, bool]] = []
    real = filesystem.write_all

    def spying(fd: int, chunks: Any, offset: int | None = None) -> None:
        seen.append((offset, sum(len(c) for c in chunks), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        real(fd, chunks, offset)

    monkeypatch.setattr(filesystem, "write_all", spying)
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(4 * BUFFER + 5 * 4096 + 3)
    cuts = [(2 * BUFFER, 4 * BUFFER), (0, 2 * BUFFER), (4 * BUFFER, 4 * BUFFER + 4096), (4 * BUFFER + 4096, len(data))]
    for start, stop in cuts:  # out of order, as the client's parallel uploads arrive
        assert await store.write_part("9", f"{start:020d}", pieces(data[start:stop], 70_000), stop - start, start) == (
            stop - start
        )
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if not directio.set_direct(probe, True):
            pytest.skip(f"the filesystem under {tmp_path} refuses O_DIRECT")
    finally:
        os.close(probe)
    direct = sorted((at, n) for at, n, on in seen if on)
    assert direct == [(0, BUFFER), (BUFFER, BUFFER), (2 * BUFFER, BUFFER), (3 * BUFFER, BUFFER)]
    assert not any(on for at, _, on in seen if at is not None and at >= 4 * BUFFER)  # the tail: page cache
    assert await store.complete("9", [f"{a:020d}" for a, _ in sorted(cuts)], "k") == len(data)
    assert b"".join([c async for c in store.read("k")]) == data


async def test_a_direct_write_must_start_at_a_buffer_boundary() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    with pytest.raises(ValueError, match="multiple"):
        await directio.write_direct(-1, nothing(), 0, filesystem.write_all, offset=4096)
