"""The agent's log shipper: every line of a job goes to disk first, then to the log pipeline, in order.

``await shipper.send(job_id, event)`` numbers the line (1, 2, 3... per job), appends it to
``<spool>/<job_id>/lines.ndjson`` and returns once the line is on disk (fdatasync'd, in a worker thread so the event
loop goes on). Sends that arrive while a sync is running share the next one (group commit), so many jobs writing at
once cost one sync per round, not one per line. A background flusher sends each job's unsent lines in order, one
batch per job at a time, and moves the job's acknowledged offset (``acked``) forward only when the pipeline answered
that they are stored. While the pipeline is unreachable, answers 5xx or 429, lines wait on disk and are sent again
later (with back-off, honouring Retry-After); the pipeline drops lines it already has by ``(job_id, seq)``, so a
resend after a lost answer stores nothing twice. A job's directory is removed once it is closed and every line is
acknowledged. A shipper started on a spool left by an earlier agent process replays what is there.

Each job's lines go with that job's own token (scope ``logs``, handed with its lease): ``start_job`` keeps it in
the job's spool directory (``token``, mode 0600), so lines spooled before an agent restart are sent with it
afterwards. Lines the pipeline refuses for good (400; 403, the token is not for them; an expired token) are kept
aside in ``rejected.ndjson`` rather than blocking the job.

It also satisfies the agent's ``JobOutput`` (``emit`` / ``follow_files`` / ``close_job`` / ``aclose``):
``follow_files`` forwards the VMM's own files about a job's VM line by line (Firecracker's log and metrics) until
``close_job`` has read them to the end; the job's exit line is held until then, so it stays the job's last line
even though Firecracker logs its own shutdown after the guest has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx
import jwt
import orjson

from smith import retry
from smith.agent.private import open_private, private_dir
from smith.asyncutil import supervise, wait_event
from smith.logging import get_logger
from smith.wire.guest import GuestEvent

log = get_logger("smith.agent.logship")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


@dataclass(eq=False)
class _Job:
    job_id: str
    dir: Path
    file: IO[bytes]
    next_seq: int
    written: int  # bytes appended
    acked: int  # bytes acknowledged by the pipeline
    closed: bool = False
    last_sent: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    busy: bool = False
    new: bool = False  # its directory entries are not synced yet
    dropped: int = 0  # lines not spooled since the last one that was (the spool was full)
    token: str = ""  # the job's own log token (start_job), kept in <dir>/token


def _sync_and_close(fd: int, sync: Callable[[int], None]) -> None:
    """Sync one descriptor, then close it (runs in a worker thread)."""
    try:
        sync(fd)
    finally:
        os.close(fd)


class LogShipper:
    """Ships job output to ``url`` (``POST /v1/logs``), spooling under ``spool_dir``."""

    def __init__(
        self,
        url: str,
        token: str | Callable[[str], str] | None,
        spool_dir: Path,
        *,
        host: str = "",
        batch_lines: int = 5000,
        batch_bytes: int = 4 * 1024 * 1024,
        flush_interval: float = 0.2,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_spool_bytes: int = 0,
        min_free_bytes: int = 1 << 30,
        fsync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.spool = Path(spool_dir)
        self.host = host
        self.batch_lines = batch_lines
        self.batch_bytes = batch_bytes
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.jobs: dict[str, _Job] = {}
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._not_before = 0.0  # monotonic time before which nothing is sent (pipeline down / busy)
        self._failures = 0
        self._closing = False
        self._stopped = False
        self._job_followers: dict[str, list[tuple[asyncio.Task[None], asyncio.Event]]] = {}
        self._held_exit: dict[str, dict[str, Any]] = {}  # a followed job's exit line, written after the VMM's
        self.sent_lines = 0
        # The spool's bounds: at most max_spool_bytes in it (0: no limit), and never below min_free_bytes free on
        # its filesystem. Past either, lines are counted instead of spooled, and a marker line says how many.
        self.max_spool_bytes = max_spool_bytes
        self.min_free_bytes = min_free_bytes
        self.spool_bytes = 0  # bytes in the spool's job files
        self.dropped_lines = 0
        self._free = 0
        self._free_checked_at = -1.0
        self._written_since_check = 0
        # Group commit: _appended counts lines written, _synced how many of them are on disk; one sync at a time.
        self._fsync = fsync
        self._appended = 0
        self._synced = 0
        self._dirty: set[_Job] = set()
        self._syncing: asyncio.Future[None] | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up what an earlier process left in the spool, and start flushing."""
        private_dir(self.spool)
        for d in sorted(self.spool.iterdir()):
            if d.is_dir() and (d / "lines.ndjson").exists() and d.name not in self.jobs:
                self.jobs[d.name] = self._open(d.name)
                self.spool_bytes += self.jobs[d.name].written
        if self.jobs:
            log.info("replaying spooled logs", jobs=len(self.jobs))
        if self._task is None:
            self._task = asyncio.create_task(supervise("log-shipper", self._run), name="log-shipper")

    async def close(self, drain_seconds: float = 30.0) -> bool:
        """Send what is spooled, for at most ``drain_seconds``; True if everything was acknowledged.

        What is not acknowledged stays on disk and is sent by the next shipper started on this spool.
        """
        for followers in self._job_followers.values():
            for task, _ in followers:
                task.cancel()
        self._closing = True
        self._wake.set()
        await self.sync()  # what followers appended is on disk too
        deadline = time.monotonic() + drain_seconds
        while self._unsent() and time.monotonic() < deadline and self._task and not self._task.done():
            self._wake.set()
            await asyncio.sleep(0.05)
        if self._task:
            # Ask the loop to stop (it checks a flag each round); cancel only if it does not within the bound,
            # and cancel until done: on Python 3.11 a cancel landing as wait_for's inner wait completes is swallowed.
            self._stopped = True
            self._wake.set()
            await asyncio.wait({self._task}, timeout=max(1.0, deadline - time.monotonic()))
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._task.result()
            self._task = None
        done = not self._unsent()
        for job in list(self.jobs.values()):
            job.file.close()
            if job.closed and job.acked >= job.written:
                shutil.rmtree(job.dir, ignore_errors=True)
        self.jobs.clear()
        await self._client.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        return done

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> LogShipper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- producing ------------------------------------------------------------------------------------------

    async def send(self, job_id: str, event: GuestEvent, *, step: str = "", vm: str = "", repo: str = "") -> int:
        """Spool one event of a job as a line, on disk when this returns; its seq (0: held or not spooled)."""
        seq = self._spool_event(job_id, event, step=step, vm=vm, repo=repo)
        await self.sync()
        return seq

    async def send_many(self, job_id: str, events: list[GuestEvent]) -> None:
        """``send`` each event, in order, with one sync for them all."""
        for event in events:
            self._spool_event(job_id, event)
        await self.sync()

    def _spool_event(self, job_id: str, event: GuestEvent, *, step: str = "", vm: str = "", repo: str = "") -> int:
        if event.type == "started":
            stream, text, last = "system", "job started", False
        elif event.type == "exit":
            stream, text, last = "system", f"exit code {event.exit_code}", True
            if self._job_followers.get(job_id):  # the VMM may still log: keep the exit the job's last line
                self._held_exit[job_id] = {"line": text, "ts": event.ts, "step": step, "vm": vm, "repo": repo}
                return 0
        else:
            stream, text, last = event.stream, event.line, False
        return self.append(job_id, text, stream=stream, ts=event.ts, step=step, vm=vm, repo=repo, last=last)

    async def sync(self) -> None:
        """Return once every line appended so far is on disk (one sync covers every job's lines)."""
        target = self._appended
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync_round())
            await asyncio.shield(self._syncing)

    async def _sync_round(self) -> None:
        try:
            upto = self._appended
            jobs, self._dirty = self._dirty, set()
            fds: list[tuple[int, Callable[[int], None]]] = []
            for job in jobs:
                job.file.flush()
                fds.append((os.dup(job.file.fileno()), self._fsync))  # its own: the job's file may close meanwhile
                if job.new:
                    fds += [(os.open(d, os.O_RDONLY), os.fsync) for d in (job.dir, self.spool)]
            # One thread per file: the filesystem commits syncs that wait at the same time together (on ext4 32
            # files take about what one does), where one after the other each would wait for its own commit.
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="log-spool-sync")
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(
                *(loop.run_in_executor(self._pool, _sync_and_close, fd, sync) for fd, sync in fds),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    self._dirty |= jobs  # the next round tries them again
                    raise result
            for job in jobs:
                job.new = False
            self._synced = max(self._synced, upto)
        finally:
            self._syncing = None

    def append(
        self,
        job_id: str,
        line: str,
        *,
        stream: str = "stdout",
        ts: float | None = None,
        step: str = "",
        vm: str = "",
        repo: str = "",
        last: bool = False,
    ) -> int:
        job = self._job(job_id)
        if job.closed:
            raise ValueError(f"job {job_id} is closed for logs")
        ts = time.time() if ts is None else ts
        data = self._encode(job_id, job.next_seq, ts, line, stream=stream, step=step, vm=vm, repo=repo, last=last)
        full = self._full(len(data))
        if full and not last:  # (a job's last line is always kept: it is small and ends the job)
            job.dropped += 1
            self.dropped_lines += 1
            if job.dropped == 1:
                log.warning("log spool full; lines are not spooled", job_id=job_id, reason=full)
            return 0
        if job.dropped:
            note = (
                f"smith: {job.dropped} line(s) of this job were not shipped: the agent's log spool was full "
                f"({full or 'since freed'}); the agent's local job log has them"
            )
            job.dropped = 0
            self._write(job, self._encode(job_id, job.next_seq, ts, note, stream="system"))
            data = self._encode(job_id, job.next_seq, ts, line, stream=stream, step=step, vm=vm, repo=repo, last=last)
        if last:
            job.last_sent = True
        self._write(job, data)
        return job.next_seq - 1

    def _encode(
        self,
        job_id: str,
        seq: int,
        ts: float,
        line: str,
        *,
        stream: str,
        step: str = "",
        vm: str = "",
        repo: str = "",
        last: bool = False,
    ) -> bytes:
        """One NDJSON line of ``smith.wire.logs.LogLine`` (empty optional fields left out)."""
        rec: dict[str, Any] = {"job_id": job_id, "seq": seq, "ts": ts, "stream": stream, "line": line}
        for key, value in (("host", self.host), ("step", step), ("vm", vm), ("repo", repo)):
            if value:
                rec[key] = value
        if last:
            rec["last"] = True
        return orjson.dumps(rec) + b"\n"

    def _write(self, job: _Job, data: bytes) -> None:
        """Spool one encoded line as the job's next seq."""
        job.file.write(data)
        job.written += len(data)
        job.next_seq += 1
        self._appended += 1
        self._dirty.add(job)
        self.spool_bytes += len(data)
        self._written_since_check += len(data)
        if job.written - job.acked >= self.batch_bytes:
            self._wake.set()

    def _full(self, size: int) -> str:
        """Why ``size`` more bytes must not go into the spool, or an empty string."""
        if self.max_spool_bytes and self.spool_bytes + size > self.max_spool_bytes:
            return f"{self.spool_bytes} of {self.max_spool_bytes} bytes"
        if not self.min_free_bytes:
            return ""
        now = time.monotonic()
        if now - self._free_checked_at >= 1.0 or self._written_since_check >= 1 << 20:
            st = os.statvfs(self.spool)
            self._free, self._free_checked_at, self._written_since_check = st.f_bavail * st.f_frsize, now, 0
        if self._free - self._written_since_check - size < self.min_free_bytes:
            return f"less than {self.min_free_bytes} bytes free on its disk"
        return ""

    async def start_job(self, job_id: str, logs_token: str | None) -> None:
        """``JobOutput``: the token that writes this job's lines, kept beside its spool for a restarted agent."""
        job = self._job(job_id)
        if logs_token and logs_token != job.token:
            tmp = job.dir / "token.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(logs_token)
            os.replace(tmp, job.dir / "token")
            job.token = logs_token

    async def emit(self, job_id: str, event: GuestEvent) -> None:
        """``JobOutput``: the agent's per-event hook."""
        await self.send(job_id, event)

    async def emit_many(self, job_id: str, events: list[GuestEvent]) -> None:
        """``JobOutput``: the events the agent read together, made durable together."""
        await self.send_many(job_id, events)

    async def close_job(self, job_id: str) -> None:
        """No more lines for this job: read its followed files to the end, mark it last (if its exit was not
        seen), delete it once all is sent."""
        await self._finish_followers(job_id)
        held = self._held_exit.pop(job_id, None)
        job = self.jobs.get(job_id)
        if job is None or job.closed:
            return
        if held is not None:
            self.append(job_id, held.pop("line"), stream="system", last=True, **held)
        if not job.last_sent:
            self.append(job_id, "smith: output closed", stream="system", last=True)
        await self.sync()
        (job.dir / "closed").touch()
        job.closed = True
        self._wake.set()

    def follow_file(self, job_id: str, path: Path, *, step: str, stream: str = "system") -> asyncio.Task[None]:
        """Forward each line written to ``path`` (a file or FIFO, e.g. Firecracker's log) as a line of the job,
        until the job is closed (``close_job`` first reads what is left) or the task is cancelled."""
        done = asyncio.Event()

        async def follow() -> None:
            loop = asyncio.get_running_loop()
            f: BinaryIO = await loop.run_in_executor(None, lambda: open(path, "rb"))  # noqa: SIM115
            with f:
                buf = b""
                while True:
                    chunk = await loop.run_in_executor(None, f.read, 65536)
                    if not chunk:
                        if done.is_set():  # everything written before close_job is in
                            if buf:
                                self._append_followed(job_id, buf, stream, step)
                            return
                        await wait_event(done, 0.2)
                        continue
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        self._append_followed(job_id, raw, stream, step)

        task = asyncio.create_task(follow(), name=f"follow-{step}-{job_id}")
        self._job_followers.setdefault(job_id, []).append((task, done))
        return task

    async def follow_files(self, job_id: str, files: dict[str, Path]) -> None:
        """``JobOutput``: forward the VMM's own files about the job's VM (step name -> path)."""
        for step, path in files.items():
            self.follow_file(job_id, path, step=step)

    def _append_followed(self, job_id: str, raw: bytes, stream: str, step: str) -> None:
        job = self.jobs.get(job_id)
        if raw.strip() and (job is None or not job.closed):  # (followers are finished before a job closes)
            self.append(job_id, raw.decode("utf-8", "replace"), stream=stream, step=step)

    async def _finish_followers(self, job_id: str, seconds: float = 5.0) -> None:
        """Let the job's followers read their files to the end, then stop (cancel past ``seconds``)."""
        followers = self._job_followers.pop(job_id, [])
        for _, done in followers:
            done.set()
        tasks = {task for task, _ in followers}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=seconds)
            for task in late:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- the spool ------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        job = self.jobs.get(job_id)
        if job is None:
            if not _SAFE.match(job_id):
                raise ValueError(f"job id {job_id!r} cannot name a spool directory")
            job = self.jobs[job_id] = self._open(job_id)
            self._wake.set()
        return job

    def _open(self, job_id: str) -> _Job:
        d = private_dir(self.spool / job_id)
        path = d / "lines.ndjson"
        acked = 0
        with contextlib.suppress(OSError, ValueError):
            acked = int((d / "acked").read_text().strip() or 0)
        next_seq = 1
        size = path.stat().st_size if path.exists() else 0
        if size:
            with path.open("rb") as rf:
                rf.seek(max(0, size - 1024 * 1024))
                tail = rf.read()
            complete, _, partial = tail.rpartition(b"\n")
            if partial:  # a torn write from a crash: drop it
                with path.open("r+b") as wf:
                    wf.truncate(size - len(partial))
                size -= len(partial)
            last_line = complete.rsplit(b"\n", 1)[-1]
            with contextlib.suppress(ValueError, KeyError, TypeError):
                next_seq = int(orjson.loads(last_line)["seq"]) + 1
        out = open_private(path, "ab", buffering=1024 * 1024)
        job = _Job(job_id, d, out, next_seq=next_seq, written=size, acked=min(acked, size), new=not size)
        job.closed = (d / "closed").exists()
        with contextlib.suppress(OSError):
            job.token = (d / "token").read_text().strip()
        job.last_sent = job.closed
        return job

    def _unsent(self) -> bool:
        return any(j.acked < j.written for j in self.jobs.values())

    def _read_batch(self, job: _Job, end: int) -> bytes:
        """The next whole lines after the acknowledged offset, up to ``end`` (runs in a worker thread)."""
        with (job.dir / "lines.ndjson").open("rb") as f:
            f.seek(job.acked)
            data = f.read(min(self.batch_bytes, end - job.acked))
        if len(data) < end - job.acked or not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        if data.count(b"\n") > self.batch_lines:
            cut = -1
            for _ in range(self.batch_lines):
                cut = data.index(b"\n", cut + 1)
            data = data[: cut + 1]
        return data

    def _save_ack(self, job: _Job) -> None:
        tmp = job.dir / "acked.tmp"
        tmp.write_text(str(job.acked))
        os.replace(tmp, job.dir / "acked")

    # -- sending --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.flush_interval)
            self._wake.clear()
            if self._stopped:
                return
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            ready = [j for j in self.jobs.values() if j.acked < j.written and not j.busy]
            if ready:
                await asyncio.gather(*(self._ship(j) for j in ready))
            for job in [j for j in self.jobs.values() if j.closed and j.acked >= j.written]:
                job.file.close()
                shutil.rmtree(job.dir, ignore_errors=True)
                self.jobs.pop(job.job_id, None)
                self.spool_bytes -= job.written

    async def _ship(self, job: _Job) -> None:
        """Send this job's next batches until it is caught up or a send fails."""
        job.busy = True
        try:
            while job.acked < job.written and time.monotonic() >= self._not_before:
                job.file.flush()  # here, not in the worker thread: appends happen on this thread
                data = await asyncio.to_thread(self._read_batch, job, job.written)
                if not data:
                    return
                if not await self._post(job, data):
                    return
                job.acked += len(data)
                self.sent_lines += data.count(b"\n")
                await asyncio.to_thread(self._save_ack, job)
        finally:
            job.busy = False

    def _token_of(self, job: _Job) -> str:
        if job.token:
            return job.token
        return (self._token(job.job_id) if callable(self._token) else self._token) or ""

    def _set_aside(self, job: _Job, data: bytes, why: str) -> bool:
        """Keep lines the pipeline will never take in ``rejected.ndjson``, and go on with the job."""
        with open_private(job.dir / "rejected.ndjson", "ab") as f:
            f.write(data)
        log.error("log pipeline refused lines; kept in rejected.ndjson", job_id=job.job_id, reason=why)
        return True

    async def _post(self, job: _Job, data: bytes) -> bool:
        token = self._token_of(job)
        if not token:
            return self._set_aside(job, data, "no log token for this job")
        if _expired(token):
            return self._set_aside(job, data, "the job's log token has expired")
        try:
            resp = await self._client.post(
                f"{self.url}/v1/logs",
                content=data,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
            )
        except httpx.HTTPError as exc:
            self._back_off(None, f"unreachable: {exc!r}")
            return False
        if resp.status_code == 200:
            self._failures = 0
            return True
        if resp.status_code in (400, 403):
            # Lines we wrote ourselves were refused, or the token is not for them: keep them aside rather than
            # block the job forever.
            return self._set_aside(job, data, f"HTTP {resp.status_code}: {resp.text[:500]}")
        if resp.status_code == 413 and self.batch_bytes > 64 * 1024:
            self.batch_bytes //= 2
            return False
        self._back_off(retry.retry_after(resp.headers.get("retry-after"), time.time()), f"HTTP {resp.status_code}")
        return False

    def _back_off(self, retry_after: float | None, why: str) -> None:
        self._failures += 1
        delay = retry.RetryPolicy(base=0.2, max=self.max_backoff, jitter=0.5).wait(self._failures, retry_after)
        self._not_before = max(self._not_before, time.monotonic() + delay)
        if self._failures in (1, 5) or self._failures % 20 == 0:
            log.warning("log pipeline not taking lines; spooling", reason=why, retry_in=round(delay, 2))


def _expired(token: str) -> bool:
    """Whether a JWT's ``exp`` has passed (read, not verified: the pipeline verifies)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return False
    return isinstance(exp, int | float) and exp < time.time()
