"""The bounded in-memory batcher between ``POST /v1/logs`` and ClickHouse.

Requests put their lines here and wait: a request is answered only once its lines are in ClickHouse. Each of
``lanes`` flushers writes as soon as ``min_rows`` wait or the oldest waited ``delay`` seconds, at most
``batch_rows`` in one insert; rows that arrive while inserts run go into the next one (group commit), so a busy
pipeline writes big batches back to back and a quiet one answers within ``delay``. Two lanes keep both the server
and this process busy: one insert is parsed and written while the next batch forms and goes out. Lanes never write
the same job at once, so each job's lines are still written in order and checked for duplicates against what is
stored. At most ``max_pending`` rows wait or are being written; past that ``submit`` raises ``RateLimited`` (HTTP
429 with Retry-After) and the agent keeps the lines on its disk: nothing is dropped silently.

Deduplication by ``(job_id, seq)``: within a batch by a set, against the store by each job's highest stored seq
(cached) and, only when a batch reaches below it (a retry, a replay), by reading which of those seqs exist. One job
is written by one lane at a time, so a retry arriving while its first copy is being written is checked after it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

from smith.asyncutil import supervise, wait_event
from smith.errors import RateLimited, SmithError, Unavailable
from smith.logging import get_logger
from smith.logs import metrics
from smith.logs.ingest import Line, Spans, spans
from smith.logs.store import LogStore

log = get_logger("smith.logs.batcher")


@dataclass
class _Request:
    rows: list[Line]
    future: asyncio.Future[tuple[int, int]]
    at: float
    spans: Spans | None  # per job (lowest, highest) seq, if its seqs strictly increase
    jobs: frozenset[str]


def _disjoint(taken: list[_Request]) -> bool:
    """No two requests share a (job, seq): every request is increasing and their ranges do not overlap."""
    by_job: dict[str, list[tuple[int, int]]] = {}
    for req in taken:
        if req.spans is None:
            return False
        for j, span in req.spans.items():
            by_job.setdefault(j, []).append(span)
    for ranges in by_job.values():
        ranges.sort()
        if any(a[1] >= b[0] for a, b in itertools.pairwise(ranges)):
            return False
    return True


@dataclass
class Stats:
    written: int = 0
    duplicates: int = 0
    batches: int = 0
    rejected: int = 0
    failed_batches: int = 0
    last_batch_seconds: float = 0.0


class Batcher:
    def __init__(
        self,
        store: LogStore,
        *,
        batch_rows: int = 50_000,
        min_rows: int = 5_000,
        delay: float = 0.2,
        max_pending: int = 1_000_000,
        known_jobs: int = 100_000,
        lanes: int = 2,
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.min_rows = min(min_rows, batch_rows)
        self.delay = delay
        self.max_pending = max_pending
        self.pending = 0  # rows queued or being written
        self.stats = Stats()
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._closing = False
        self.lanes = max(1, lanes)
        self._tasks: list[asyncio.Task[None]] = []
        self._writing: set[str] = set()  # jobs some lane is writing now
        self._max_seq: OrderedDict[str, int] = OrderedDict()  # job -> highest stored seq (-1: none)
        self._known_jobs = known_jobs

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(supervise(f"logs-lane-{n}", self._lane), name=f"logs-lane-{n}")
                for n in range(self.lanes)
            ]

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Refuse new rows, write what waits (for at most ``drain_seconds``), then stop."""
        self._closing = True
        self._wake.set()
        if not self._tasks:
            return
        await asyncio.wait(self._tasks, timeout=drain_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
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

    async def submit(
        self, rows: list[Line], seq_spans: Spans | Literal["compute"] | None = "compute"
    ) -> tuple[int, int]:
        """Wait until ``rows`` are stored; ``(new rows written, duplicates skipped)``.

        ``seq_spans`` is what ``smith.logs.ingest.spans(rows)`` says, when the caller has it already (the parser
        does: ``Batch.spans``); computed here otherwise."""
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
        if seq_spans == "compute":
            seq_spans = spans(rows)
        jobs = frozenset(seq_spans) if seq_spans is not None else frozenset(r.job_id for r in rows)
        self._queue.append(_Request(rows, future, time.monotonic(), seq_spans, jobs))
        self.pending += len(rows)
        self._wake.set()
        return await future

    async def wait_flush(self, seconds: float) -> None:
        """Return after the next batch is written, or after ``seconds``."""
        await wait_event(self._flushed, seconds)

    # -- flushing ---------------------------------------------------------------------------------------

    def _ready(self) -> list[_Request]:
        """Queued requests a lane may write now, in order: none touching a job another lane is writing (nor any
        later request of such a job, so each job's lines are written in the order they came)."""
        blocked = set(self._writing)
        ready = []
        for req in self._queue:
            if blocked and not blocked.isdisjoint(req.jobs):
                blocked.update(req.jobs)
                continue
            ready.append(req)
        return ready

    async def _lane(self) -> None:
        while True:
            ready = self._ready()
            if not ready:
                if self._closing and not self._queue:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = ready[0].at + self.delay - time.monotonic()
            if wait > 0 and not self._closing and sum(len(r.rows) for r in ready) < self.min_rows:
                self._wake.clear()
                await wait_event(self._wake, wait)
                continue
            taken: list[_Request] = []
            count = 0
            for req in ready:
                if taken and count + len(req.rows) > self.batch_rows:
                    break
                taken.append(req)
                count += len(req.rows)
            chosen = {id(r) for r in taken}
            self._queue = deque(r for r in self._queue if id(r) not in chosen)
            jobs = set().union(*(r.jobs for r in taken))
            self._writing |= jobs
            try:
                await self._write_each(taken)
            finally:
                self._writing -= jobs
                self.pending -= count
                flushed, self._flushed = self._flushed, asyncio.Event()
                flushed.set()
                self._wake.set()  # jobs this lane held may be ready for another

    async def _write_each(self, taken: list[_Request]) -> None:
        """Write ``taken`` as one insert. If the server refuses it for good (not "busy"), write each request on
        its own, so one request the server will never take fails alone instead of failing its neighbours on every
        retry."""
        try:
            await self._write(taken)
            return
        except Exception as exc:
            err = _error(exc)
            if len(taken) == 1 or err.retryable:
                self._fail(taken, err, exc)
                return
        for req in taken:
            try:
                await self._write([req])
            except Exception as exc:
                self._fail([req], _error(exc), exc)

    def _fail(self, taken: list[_Request], err: SmithError, exc: BaseException) -> None:
        """Every waiter must hear about it; the agent keeps the lines and retries."""
        self.stats.failed_batches += 1
        if not err.retryable:
            log.error("batch write failed", error=str(exc), rows=sum(len(r.rows) for r in taken))
        for req in taken:
            if not req.future.done():
                req.future.set_exception(err)

    async def _write(self, taken: list[_Request]) -> None:
        started = time.monotonic()
        # Which jobs might see a seq already stored?
        lo: dict[str, int] = {}
        hi: dict[str, int] = {}
        for req in taken:
            pairs = req.spans.values() if req.spans is not None else ((r.seq, r.seq) for r in req.rows)
            jobs = req.spans.keys() if req.spans is not None else (r.job_id for r in req.rows)
            for j, (a, b) in zip(jobs, pairs, strict=True):
                if j not in lo or a < lo[j]:
                    lo[j] = a
                if j not in hi or b > hi[j]:
                    hi[j] = b
        known = {j: self._max_seq[j] for j in lo if j in self._max_seq}
        unknown = [j for j in lo if j not in known]
        if unknown:
            found = await self.store.max_seqs(unknown)
            for j in unknown:
                known[j] = found.get(j, -1)
        ranges = {j: (lo[j], min(hi[j], known[j])) for j in lo if lo[j] <= known[j]}
        stored = await self.store.existing(ranges) if ranges else {}
        seen: set[tuple[str, int]] = set()
        out: list[Line] = []
        results: list[tuple[int, int]] = []
        if not stored and _disjoint(taken):  # the usual case: nothing to drop, no per-row work
            for req in taken:
                out += req.rows
                results.append((len(req.rows), 0))
            taken_slow: list[_Request] = []
        else:
            taken_slow = taken
        for req in taken_slow:
            new = dup = 0
            for row in req.rows:
                key = (row.job_id, row.seq)
                if key in seen or (stored and key[1] in stored.get(key[0], ())):
                    dup += 1
                    continue
                seen.add(key)
                out.append(row)
                new += 1
            results.append((new, dup))
        if out:
            try:
                await self.store.insert(self.store.encode(out))
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
        metrics.written(len(out), sum(d for _, d in results), self.stats.last_batch_seconds)

    def _remember(self, job_id: str, seq: int) -> None:
        self._max_seq[job_id] = seq
        self._max_seq.move_to_end(job_id)
        while len(self._max_seq) > self._known_jobs:
            self._max_seq.popitem(last=False)


def _error(exc: BaseException) -> SmithError:
    return exc if isinstance(exc, SmithError) else Unavailable(f"write failed: {exc!r}")
