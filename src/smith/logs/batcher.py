"""The bounded in-memory batcher between ``POST /v1/logs`` and ClickHouse.

Requests put their rows here and wait: a request is answered only once its rows are in ClickHouse. One flusher
writes a batch when ``batch_rows`` are waiting or the oldest waited ``delay`` seconds. At most ``max_pending``
rows wait or are being written; past that ``submit`` raises ``RateLimited`` (HTTP 429 with Retry-After) and the
agent keeps the lines on its disk: nothing is dropped silently.

Deduplication by ``(job_id, seq)``: within a batch by a set, against the store by each job's highest stored seq
(cached) and, only when a batch reaches below it (a retry, a replay), by reading which of those seqs exist. One
flusher writes in order, so a retry arriving while its first copy is being written is checked after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from smith.errors import RateLimited, SmithError, Unavailable
from smith.logging import get_logger
from smith.logs.ingest import encode
from smith.logs.store import LogStore

log = get_logger("smith.logs.batcher")


@dataclass
class _Request:
    rows: list[dict[str, Any]]
    future: asyncio.Future[tuple[int, int]]
    at: float


@dataclass
class Stats:
    written: int = 0
    duplicates: int = 0
    batches: int = 0
    rejected: int = 0
    failed_batches: int = 0
    last_batch_seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class Batcher:
    def __init__(
        self,
        store: LogStore,
        *,
        batch_rows: int = 50_000,
        delay: float = 0.2,
        max_pending: int = 1_000_000,
        known_jobs: int = 100_000,
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.delay = delay
        self.max_pending = max_pending
        self.pending = 0  # rows queued or being written
        self.stats = Stats()
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._max_seq: OrderedDict[str, int] = OrderedDict()  # job -> highest stored seq (-1: none)
        self._known_jobs = known_jobs

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="logs-batcher")

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Refuse new rows, write what waits (for at most ``drain_seconds``), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_seconds)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for req in self._queue:
            if not req.future.done():
                req.future.set_exception(Unavailable("log pipeline stopped before writing", retry_after=1.0))
        self._queue.clear()

    async def __aenter__(self) -> Batcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- submitting -------------------------------------------------------------------------------------

    async def submit(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Wait until ``rows`` are stored; ``(new rows written, duplicates skipped)``."""
        if self._closing:
            raise Unavailable("log pipeline is shutting down", retry_after=1.0)
        if not rows:
            return 0, 0
        if self.pending + len(rows) > self.max_pending and self.pending > 0:
            self.stats.rejected += len(rows)
            raise RateLimited(
                f"{self.pending} lines are waiting to be written (limit {self.max_pending}); retry later",
                retry_after=max(1.0, self.stats.last_batch_seconds * 2),
            )
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(rows, future, time.monotonic()))
        self.pending += len(rows)
        if len(self._queue) == 1 or self.pending >= self.batch_rows:
            self._wake.set()
        return await future

    async def wait_flush(self, seconds: float) -> None:
        """Return after the next batch is written, or after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed.wait(), seconds)

    # -- flushing ---------------------------------------------------------------------------------------

    def _queued_rows(self) -> int:
        return sum(len(r.rows) for r in self._queue)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._queue[0].at + self.delay - time.monotonic()
            if wait > 0 and not self._closing and self._queued_rows() < self.batch_rows:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            taken: list[_Request] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0].rows) <= self.batch_rows):
                req = self._queue.popleft()
                taken.append(req)
                count += len(req.rows)
            try:
                await self._write(taken)
            except Exception as exc:  # every waiter must hear about it; the agent retries
                self.stats.failed_batches += 1
                err = exc if isinstance(exc, SmithError) else Unavailable(f"write failed: {exc!r}")
                if not isinstance(err, Unavailable) and not err.retryable:
                    log.error("batch write failed", error=str(exc), rows=count)
                for req in taken:
                    if not req.future.done():
                        req.future.set_exception(err)
            finally:
                self.pending -= count
                flushed, self._flushed = self._flushed, asyncio.Event()
                flushed.set()

    async def _write(self, taken: list[_Request]) -> None:
        started = time.monotonic()
        # Which jobs might see a seq already stored?
        lo: dict[str, int] = {}
        hi: dict[str, int] = {}
        for req in taken:
            for row in req.rows:
                j, s = row["job_id"], row["seq"]
                if j not in lo or s < lo[j]:
                    lo[j] = s
                if j not in hi or s > hi[j]:
                    hi[j] = s
        known = {j: self._max_seq[j] for j in lo if j in self._max_seq}
        unknown = [j for j in lo if j not in known]
        if unknown:
            found = await self.store.max_seqs(unknown)
            for j in unknown:
                known[j] = found.get(j, -1)
        ranges = {j: (lo[j], min(hi[j], known[j])) for j in lo if lo[j] <= known[j]}
        stored = await self.store.existing(ranges) if ranges else {}
        seen: set[tuple[str, int]] = set()
        out: list[dict[str, Any]] = []
        results: list[tuple[int, int]] = []
        for req in taken:
            new = dup = 0
            for row in req.rows:
                key = (row["job_id"], row["seq"])
                if key in seen or (stored and key[1] in stored.get(key[0], ())):
                    dup += 1
                    continue
                seen.add(key)
                out.append(row)
                new += 1
            results.append((new, dup))
        if out:
            try:
                await self.store.insert(encode(out))
            except BaseException:
                # Part of it may be stored: forget these jobs' high-water marks so a retry checks the store.
                for j in lo:
                    self._max_seq.pop(j, None)
                raise
        for j, s in hi.items():
            self._remember(j, max(s, known[j]))
        for req, result in zip(taken, results, strict=True):
            if not req.future.done():
                req.future.set_result(result)
        self.stats.written += len(out)
        self.stats.duplicates += sum(d for _, d in results)
        self.stats.batches += 1
        self.stats.last_batch_seconds = time.monotonic() - started

    def _remember(self, job_id: str, seq: int) -> None:
        self._max_seq[job_id] = seq
        self._max_seq.move_to_end(job_id)
        while len(self._max_seq) > self._known_jobs:
            self._max_seq.popitem(last=False)
