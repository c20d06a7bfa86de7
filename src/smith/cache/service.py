"""What the cache does, whatever protocol asked: lookups, reservations, part uploads, finalize, eviction.

The protocol modules (``twirp``, ``legacy``, ``blob``) only translate HTTP to these calls. A store or Redis
outage never fails a build: ``lookup`` answers a miss and ``reserve`` raises ``Unavailable``, which the
protocol modules turn into a clean "not saved" answer the client does not retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from smith.cache import metrics
from smith.cache.metadata import Metadata
from smith.cache.settings import CacheSettings
from smith.domain.cache import (
    CacheEntry,
    EntryState,
    Tenant,
    blob_key,
    check_key,
    check_version,
    lookup_order,
)
from smith.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, SmithError, Unavailable
from smith.logging import get_logger
from smith.ports import BlobStore, FileRange, LocalBlobs

log = get_logger("smith.cache")

MAX_PART_BYTES = 1024**3
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Download:
    """What a download sends: ``files``, local files opened already (``LocalBlobs``), or else ``body``, a stream
    whose first chunk is already fetched. ``aclose`` releases either."""

    entry: CacheEntry
    start: int
    end: int  # inclusive
    body: AsyncIterator[bytes]
    partial: bool = False  # a Range was honoured: answer 206
    files: FileRange | None = None

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    async def aclose(self) -> None:
        if self.files is not None:
            await self.files.aclose()
        await self.body.aclose()  # type: ignore[attr-defined]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a single ``bytes=`` range, or None: no header, or one to ignore (RFC 9110 14.2: another
    unit, a malformed or an invalid range, several ranges) so the whole entry is sent. ``RangeNotSatisfiable``
    (416) for a valid range that starts past the end or an empty suffix."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable("empty suffix range", size)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else max(start, size - 1)
    if end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"range {header!r} is outside the entry's {size} bytes", size)
    return start, min(end, size - 1)


class RangeNotSatisfiable(InvalidInput):
    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class CacheService:
    def __init__(self, settings: CacheSettings, meta: Metadata, store: BlobStore) -> None:
        self.settings = settings
        self.meta = meta
        self.store = store
        self._stop = asyncio.Event()

    # -- restore ---------------------------------------------------------------------------------------

    async def lookup(self, tenant: Tenant, key: str, restore_keys: list[str], version: str) -> CacheEntry | None:
        """The entry a restore gets, or None. Bad input raises; an outage answers None (a miss)."""
        order = lookup_order(tenant, key, restore_keys)
        check_version(version)
        if not self.store_healthy():
            log.warning("cache lookup answered miss: storage circuit open", org=tenant.org)
            return None
        try:
            for scope, k, prefix in order:
                if prefix:
                    found = await self.meta.newest_with_prefix(tenant, scope, version, k)
                else:
                    found = await self.meta.find(tenant, scope, version, k)
                if found and found.state is EntryState.FINAL:
                    await self.meta.touch(found)
                    await self.meta.count(tenant.org, "hits")
                    metrics.lookup(tenant.org, hit=True)
                    return found
            await self.meta.count(tenant.org, "misses")
            metrics.lookup(tenant.org, hit=False)
        except Unavailable as exc:
            log.warning("cache lookup answered miss: metadata unavailable", org=tenant.org, error=exc.message)
        return None

    async def open(self, entry_id: int, range_header: str | None) -> Download:
        entry = await self.meta.get(entry_id)
        if entry is None or entry.state is not EntryState.FINAL:
            raise NotFound("no such cache entry")
        rng = parse_range(range_header, entry.size)
        start, end = rng if rng else (0, entry.size - 1)
        files, body = None, _empty()
        if entry.size and isinstance(self.store, LocalBlobs):
            files = await self.store.open_range(entry.blob_key, start, end)
        elif entry.size:
            body = await _primed(self.store.read(entry.blob_key, start, end))
        metrics.moved(entry.org, "download", end - start + 1 if entry.size else 0)
        return Download(entry, start, end, body, partial=rng is not None, files=files)

    # -- save ------------------------------------------------------------------------------------------

    async def reserve(self, tenant: Tenant, key: str, version: str, declared: int = 0) -> int:
        check_key(key)
        check_version(version)
        if declared < 0:
            raise InvalidInput("cache size cannot be negative")
        if declared > self.settings.cache_max_entry_bytes:
            raise PayloadTooLarge(
                f"cache entry of {declared} bytes is over the {self.settings.cache_max_entry_bytes} byte limit"
            )
        if not self.store_healthy():
            raise Unavailable("cache storage is unavailable (circuit open); not saving")
        await self.store.check()  # a save into a store that is down is refused now, not after the upload
        got = await self.meta.reserve(tenant, key, version, declared)
        if got.won:
            log.info("cache entry reserved", org=tenant.org, repo=tenant.repo, entry=got.entry_id)
            return got.entry_id
        other = await self.meta.get(got.entry_id)
        if other and other.state is EntryState.FINAL:
            raise Conflict(f"cache entry {key!r} already exists for this version and ref; entries are immutable")
        raise Conflict(f"another job is creating cache entry {key!r}")

    def store_healthy(self) -> bool:
        io = getattr(self.store, "io", None)
        breaker = getattr(io, "breaker", None)
        return breaker is None or breaker.state != "open"

    async def _writable(self, entry_id: int) -> CacheEntry:
        entry = await self.meta.get(entry_id)
        if entry is None:
            raise NotFound("no such upload (expired, purged or never reserved)")
        if entry.state is not EntryState.RESERVED:
            raise Conflict("this cache entry is no longer accepting data")
        return entry

    async def _owned(self, tenant: Tenant, entry_id: int) -> CacheEntry:
        """An entry the caller may write: same org, repository and write scope (ref) as the job that reserved it."""
        entry = await self.meta.get(entry_id)
        if entry is None or (entry.org, entry.repo, entry.scope) != (tenant.org, tenant.repo, tenant.write_scope):
            raise NotFound("no such cache upload")
        return entry

    async def write_chunk(
        self, tenant: Tenant, entry_id: int, start: int, end: int, chunks: AsyncIterator[bytes]
    ) -> int:
        """Legacy: one chunk at its offset, from the scope that reserved the entry; never over an earlier chunk."""
        await self._owned(tenant, entry_id)
        declared = await self.meta.declared_size(entry_id)
        if declared and end >= declared:
            raise RangeNotSatisfiable(f"chunk ends at byte {end}, past the reserved size of {declared} bytes", declared)
        return await self.write_part(entry_id, f"{start:020d}", chunks, end - start + 1, offset=start)

    async def write_part(
        self, entry_id: int, part: str, chunks: AsyncIterator[bytes], size: int, *, offset: int | None = None
    ) -> int:
        """Write one part. Its bytes are claimed in Redis first, so concurrent parts cannot overshoot the entry
        size limit; with an ``offset`` (legacy chunks, named by it) a part may not overlap a claimed one, and the
        store may write it in place."""
        if size > MAX_PART_BYTES:
            raise PayloadTooLarge(f"one part may be at most {MAX_PART_BYTES} bytes")
        limit = self.settings.cache_max_entry_bytes
        got = await self.meta.claim_part(
            entry_id, part, size, limit=limit, max_parts=MAX_PARTS, ranged=offset is not None
        )
        if got == "state":
            await self._writable(entry_id)
            raise Conflict("this cache entry is no longer accepting data")
        if got == "size":
            raise PayloadTooLarge(f"entry would be over the {limit} byte limit")
        if got == "parts":
            raise InvalidInput(f"an upload may have at most {MAX_PARTS} parts")
        if got == "overlap":
            raise Conflict("this chunk overlaps bytes already sent for this entry")
        try:
            written = await self.store.write_part(str(entry_id), part, chunks, size, offset)
            await self.meta.add_part(entry_id, part, written)
        except BaseException:
            with contextlib.suppress(SmithError):
                await self.meta.release_part(entry_id, part, size)
            raise
        return written

    async def assemble(self, entry_id: int, order: list[str]) -> int:
        """Make the parts in ``order`` the entry's blob (not yet visible to restores); the store does not copy them."""
        entry = await self._writable(entry_id)
        parts = await self.meta.parts(entry_id)
        missing = [p for p in order if p not in parts]
        if missing:
            raise InvalidInput(f"{len(missing)} block(s) in the list were never uploaded")
        if not order:
            raise InvalidInput("an entry needs at least one block")
        if sum(parts[p] for p in order) > self.settings.cache_max_entry_bytes:
            raise PayloadTooLarge("entry is over the size limit")
        size = await self.store.complete(str(entry_id), order, entry.blob_key)
        state = await self.meta.mark_uploaded(entry_id, size)
        if state != "ok":
            await self._drop_blob(entry.blob_key)
            raise Conflict(f"entry changed while uploading ({state})")
        return size

    async def finalize(self, tenant: Tenant, key: str, version: str, size: int) -> int:
        """v2: make an uploaded entry readable, once the client confirms its size."""
        check_key(key)
        check_version(version)
        entry = await self.meta.find(tenant, tenant.write_scope, version, key)
        if entry is None:
            raise NotFound(f"no reservation for cache entry {key!r}")
        if entry.state is EntryState.FINAL:
            raise Conflict(f"cache entry {key!r} is already finalized")
        if entry.state is EntryState.RESERVED:
            raise InvalidInput("the upload of this entry is not complete")
        if size != entry.size:
            await self.delete(entry.id)
            raise InvalidInput(f"finalize says {size} bytes but {entry.size} were uploaded; entry dropped")
        return await self._finalize(entry, size)

    async def commit(self, tenant: Tenant, entry_id: int, size: int) -> int:
        """Legacy: the chunks (named by their offsets) become the blob and are finalized, if they cover exactly
        ``size`` bytes."""
        await self._owned(tenant, entry_id)
        await self._writable(entry_id)
        parts = await self.meta.parts(entry_id)
        if not all(name.isdigit() for name in parts):
            raise InvalidInput("this entry was not uploaded in chunks")
        order = sorted(parts, key=int)
        offset = 0
        for name in order:
            if int(name) != offset:
                break
            offset += parts[name]
        if offset != size or sum(parts.values()) != size:
            await self.delete(entry_id)
            raise InvalidInput(f"commit says {size} bytes but the chunks cover {offset} contiguous bytes; dropped")
        if size == 0:
            raise InvalidInput("empty cache entries are not stored")
        actual = await self.assemble(entry_id, order)
        fresh = await self.meta.get(entry_id)
        if fresh is None or actual != size:
            await self.delete(entry_id)
            raise InvalidInput("stored size differs from the commit; dropped")
        return await self._finalize(fresh, size)

    async def _finalize(self, entry: CacheEntry, size: int) -> int:
        state = await self.meta.finalize(entry.id, size)
        if state != "ok":
            raise Conflict(f"entry cannot be finalized ({state})")
        log.info("cache entry saved", org=entry.org, repo=entry.repo, entry=entry.id, size=size)
        metrics.moved(entry.org, "upload", size)
        await self.enforce_quota(entry.org)
        return entry.id

    # -- removal ---------------------------------------------------------------------------------------

    async def delete(self, entry_id: int) -> bool:
        """Drop an entry's metadata, then its bytes (retried by the janitor if the store is down)."""
        gone = await self.meta.delete(entry_id)
        if gone is None:
            return False
        org, state = gone
        key = blob_key(org, entry_id)
        if state is not EntryState.FINAL:
            with contextlib.suppress(SmithError):
                await self.store.abort(str(entry_id))
        await self._drop_blob(key)
        return True

    async def _drop_blob(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except SmithError as exc:
            log.warning("blob delete failed; queued for retry", blob=key, error=exc.message)
            with contextlib.suppress(SmithError):
                await self.meta.add_gc(key)

    async def enforce_quota(self, org: str) -> int:
        evicted = 0
        while await self.meta.org_bytes(org) > self.settings.cache_org_quota_bytes:
            victims = await self.meta.least_recent(org, 10)
            if not victims:
                break
            for entry_id in victims:
                if await self.meta.org_bytes(org) <= self.settings.cache_org_quota_bytes:
                    break
                if await self.delete(entry_id):
                    evicted += 1
        if evicted:
            log.info("cache quota eviction", org=org, evicted=evicted)
        return evicted

    async def purge(self, org: str, repo: str | None = None, prefix: str | None = None) -> int:
        count = 0
        for entry in await self.meta.entries_of(org):
            if repo is not None and entry.repo != repo:
                continue
            if prefix and not entry.key.startswith(prefix):
                continue
            if await self.delete(entry.id):
                count += 1
        log.info("cache purge", org=org, repo=repo, prefix=prefix, deleted=count)
        return count

    async def usage(self, org: str | None) -> dict[str, dict[str, object]]:
        return dict(await self.meta.usage(org))

    # -- janitor ---------------------------------------------------------------------------------------

    async def janitor_once(self, now: float | None = None) -> dict[str, int]:
        """Age and quota eviction, abandoned uploads (in Redis and orphans in the store), failed deletes."""
        now = time.time() if now is None else now
        done = {"unused": 0, "quota": 0, "uploads": 0, "orphans": 0, "multipart": 0, "gc": 0}
        cutoff = now - self.settings.cache_unused_days * 86400
        for org in await self.meta.orgs():
            for entry_id in await self.meta.unused_since(org, cutoff):
                done["unused"] += int(await self.delete(entry_id))
            done["quota"] += await self.enforce_quota(org)
        ttl = self.settings.cache_upload_ttl_seconds
        for entry_id in await self.meta.stale_uploads(now - ttl):
            done["uploads"] += int(await self.delete(entry_id))
        for upload in await self.store.stale_uploads(ttl):
            # An upload is abandoned once its entry is gone; a finished entry's blob may still be its parts (S3).
            if not upload.isdigit() or await self.meta.get(int(upload)) is None:
                try:
                    await self.store.abort(upload)
                    done["orphans"] += 1
                except SmithError as exc:  # one upload the store will not drop does not end the pass
                    log.warning("orphan upload cleanup failed", upload=upload, error=exc.message)
        abort_stale = getattr(self.store, "abort_stale_multipart", None)
        if abort_stale is not None:
            done["multipart"] = await abort_stale(ttl)
        for key in await self.meta.take_gc():
            try:
                await self.store.delete(key)
                done["gc"] += 1
            except SmithError:
                await self.meta.add_gc(key)
        if any(done.values()):
            log.info("cache janitor", **done)
        return done

    async def run_janitor(self) -> None:
        while not self._stop.is_set():
            try:
                await self.janitor_once()
            except SmithError as exc:
                log.warning("cache janitor pass failed", error=exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.cache_janitor_interval_seconds)

    def shutdown(self) -> None:
        self._stop.set()


async def _primed(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Fetch the first chunk now, so a missing object or a store outage is an error answer, not a 200 with a
    truncated body (S3 fetches the object on the first read)."""
    try:
        first = await anext(body)
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        await body.aclose()  # type: ignore[attr-defined]
        raise
    return _Primed(first, body)


class _Primed:
    """The first chunk, then the rest of ``body``; ``aclose`` closes ``body`` even if nothing was read (HEAD)."""

    def __init__(self, first: bytes, body: AsyncIterator[bytes]) -> None:
        self._first: bytes | None = first
        self._body = body

    def __aiter__(self) -> _Primed:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        try:
            return await anext(self._body)
        except StopAsyncIteration:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._first = None
        await self._body.aclose()  # type: ignore[attr-defined]


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover
