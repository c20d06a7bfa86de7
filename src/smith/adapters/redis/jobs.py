"""The job queue and job records on Redis Streams with one consumer group per class stream.

Delivery is at-least-once: an agent's lease is the stream entry sitting in its pending list (PEL). Heartbeats
reset the entry's idle time; ``reclaim`` takes entries idle longer than the lease TTL (XAUTOCLAIM) and puts the
job back on the queue, or fails it after ``max_attempts``. Every state change is one Lua script (scripts.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rexc

from smith.adapters.redis import keys, migrate, replay, scripts
from smith.adapters.redis.connect import Reachability, errors
from smith.adapters.redis.group import Durability, ScriptGroup
from smith.domain.jobs import Job, JobState, RunnerClass, check_agent_id
from smith.errors import ConfigError, Conflict, InvalidInput, NotFound
from smith.logging import get_logger

log = get_logger("smith.redis.jobs")

_INT_FIELDS = {"vcpus", "memory_mib", "run_id", "run_attempt", "installation_id", "attempts", "leases", "releases"}
_FLOAT_FIELDS = {"created_at", "updated_at"}
_OPT_FLOAT_FIELDS = {"assigned_at", "started_at", "finished_at"}


def job_from_hash(h: Mapping[str, str]) -> Job:
    kwargs: dict[str, Any] = {}
    for name in Job.__dataclass_fields__:
        if name not in h:
            continue
        raw = h[name]
        if name in _INT_FIELDS:
            kwargs[name] = int(raw or 0)
        elif name in _FLOAT_FIELDS:
            kwargs[name] = float(raw or 0)
        elif name in _OPT_FLOAT_FIELDS:
            kwargs[name] = float(raw) if raw else None
        elif name == "exit_code":
            kwargs[name] = int(raw) if raw not in ("", None) else None
        elif name == "labels":
            kwargs[name] = tuple(orjson.loads(raw)) if raw else ()
        elif name == "cancel_requested":
            kwargs[name] = raw == "1"
        elif name == "state":
            kwargs[name] = JobState(raw)
        else:
            kwargs[name] = raw
    return Job(**kwargs)


def job_fields(job: Job) -> dict[str, str]:
    """The hash fields a new job starts with (state and timestamps are set by the script)."""
    out: dict[str, str] = {}
    for name in (
        "id",
        "runner_class",
        "vcpus",
        "memory_mib",
        "source",
        "repo",
        "org",
        "name",
        "workflow",
        "run_id",
        "run_attempt",
        "head_sha",
        "head_branch",
        "default_branch",
        "base_ref",
        "installation_id",
        "run",
        "trace",
        "wf_run",
    ):
        out[name] = str(getattr(job, name))
    out["labels"] = orjson.dumps(list(job.labels)).decode()
    out["attempts"] = "0"
    return out


def _consumer(agent_id: str) -> str:
    """An agent id fit to be a consumer name of the group (``InvalidInput`` otherwise): an empty one would make
    XPENDING's consumer filter cover the whole group."""
    try:
        return check_agent_id(agent_id)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _reply() -> str:
    """The reply key of one script call (replay.py): a resent call finds the first run's answer there."""
    return keys.reply(replay.token())


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Recorded:
    outcome: str  # queued | known | recorded | duplicate | dequeued | updated | tombstone | unknown
    detail: str = ""
    acked: bool = True  # False: the wait for replicas (or the AOF) fell short; the write is on the primary only


@dataclass(frozen=True)
class Lease:
    job: Job
    entry: str


class RedisJobs:
    """Job records, class streams, leases. One instance per process; safe for many concurrent callers."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        blocking: aioredis.Redis | None = None,
        retention_seconds: int = 7 * 24 * 3600,
        retention_max: int = 100_000,
        delivery_ttl: int = 3 * 24 * 3600,
        events_maxlen: int = 100_000,
        unfinished_ttl: int = 30 * 24 * 3600,
        durability: Durability | None = None,
    ) -> None:
        # redis-py's type hints do not follow decode_responses=True; these are str-returning clients.
        self.r: Any = redis
        self.blocking: Any = blocking or redis
        self.retention = retention_seconds
        self.retention_max = retention_max
        self.delivery_ttl = delivery_ttl
        self.events_maxlen = events_maxlen
        self.unfinished_ttl = max(unfinished_ttl, retention_seconds)  # a job that never finishes expires too
        self._record_queued = redis.register_script(scripts.RECORD_QUEUED)
        self._record_update = redis.register_script(scripts.RECORD_UPDATE)
        self._claim = redis.register_script(scripts.CLAIM)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._handback = redis.register_script(scripts.HANDBACK)
        self._renew = redis.register_script(scripts.RENEW)
        self._report = redis.register_script(scripts.REPORT)
        self._report_runner = redis.register_script(scripts.REPORT_RUNNER)
        self._reopen = redis.register_script(scripts.REOPEN)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._drop_consumer = redis.register_script(scripts.DROP_CONSUMER)
        self._groups_ready: set[str] = set()
        self.reach = Reachability()  # an outage seen from here holds reclaim back for a lease TTL
        self.durability = durability or Durability()
        # webhook deliveries share writes (and fsyncs, and one WAIT) under load
        self._group = ScriptGroup(redis, durability=self.durability)

    # -- set-up -------------------------------------------------------------------------------------------

    async def migrate_keys(self) -> int:
        """Rename keys written before the ``{smith}`` hash tag (migrate.py)."""
        async with errors(self.reach):
            return await migrate.rename_legacy_keys(self.r)

    async def ensure_groups(self, classes: Iterable[str]) -> None:
        async with errors(self.reach):
            for name in classes:
                try:
                    await self.r.xgroup_create(keys.queue(name), keys.GROUP, id="0", mkstream=True)
                except rexc.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._groups_ready.add(name)

    async def memory_policy(self) -> str | None:
        """The server's ``maxmemory-policy`` (CONFIG GET, else INFO memory: managed services may refuse
        CONFIG), or None if neither says."""
        async with errors(self.reach):
            try:
                got = await self.r.config_get("maxmemory-policy")
                if got.get("maxmemory-policy"):
                    return str(got["maxmemory-policy"])
            except rexc.ResponseError:
                pass
            try:
                info = await self.r.info("memory")
            except rexc.ResponseError:
                return None
        policy = info.get("maxmemory_policy")
        return str(policy) if policy else None

    async def check_durability(self) -> None:
        """``ConfigError`` if the server cannot wait as ``durability`` asks: ``aof`` needs ``WAITAOF`` (Redis 7.2+,
        Valkey 8+) and ``appendonly yes``. In ``replicas`` mode, a warning if fewer replicas are connected than
        asked (every delivery is then spooled as well)."""
        d = self.durability
        async with errors(self.reach):
            if d.mode == "aof":
                try:
                    await self.r.execute_command("WAITAOF", 1, 0, 1)
                except rexc.ResponseError as exc:
                    raise ConfigError(
                        f"SMITH_REDIS_DURABILITY=aof needs WAITAOF and appendonly yes on the server: {exc}"
                    ) from exc
            elif d.mode == "replicas":
                try:
                    connected = int((await self.r.info("replication")).get("connected_slaves", 0))
                except rexc.ResponseError:  # INFO refused (some managed services): the waits will tell
                    return
                if connected < d.replicas:
                    log.warning(
                        "fewer redis replicas connected than SMITH_REDIS_MIN_REPLICAS: deliveries are spooled to "
                        "disk as well until they connect",
                        connected=connected,
                        asked=d.replicas,
                    )

    # -- webhooks -----------------------------------------------------------------------------------------

    async def record_queued(
        self, delivery_id: str, job: Job | None, outcome: Mapping[str, Any], event: Mapping[str, Any]
    ) -> Recorded:
        """Record a delivery once; with a job, enqueue it unless it is already known."""
        now = time.time()
        cls = job.runner_class if job else "_none"
        argv: list[Any] = [
            self.delivery_ttl,
            repr(now),
            orjson.dumps(outcome),
            orjson.dumps(event),
            self.events_maxlen,
            "1" if job else "0",
            job.id if job else "",
            repr(now - self.retention),
            self.retention_max,
            # One argument, not ~30: the client's per-argument packing was the largest cost of a delivery.
            orjson.dumps([x for kv in job_fields(job).items() for x in kv]) if job else b"[]",
            self.unfinished_ttl,
        ]
        ks = [
            keys.delivery(delivery_id),
            keys.job(job.id if job else "_none"),
            keys.queue(cls),
            keys.JOBS,
            keys.EVENTS,
            _reply(),
        ]
        async with errors(self.reach):
            res, acked = await self._group(self._record_queued, ks, argv)
        return Recorded(str(res[0]), str(res[1]), acked)

    async def record_update(
        self,
        delivery_id: str,
        job_id: str,
        runner_class: str | None,
        action: str,
        conclusion: str,
        outcome: Mapping[str, Any],
        event: Mapping[str, Any],
        tombstone: Mapping[str, str] | None,
        dequeue_reason: str = "",
        runner_name: str = "",
        smith_runner: bool = False,
        minted_for: str = "",
    ) -> Recorded:
        """Record GitHub's news about a job. With ``dequeue_reason``, a job still queued here leaves the queue.

        With ``tombstone`` fields, an unknown job that GitHub reports completed gets a short-lived cancelled
        record, so a late 'queued' redelivery does not enqueue it."""
        now = time.time()
        stream_class = runner_class or await self._class_of(job_id) or "_none"
        minted_class = await self._class_of(minted_for) if minted_for and minted_for != job_id else None
        if minted_class is None:
            minted_for = ""
        ks = [
            keys.delivery(delivery_id),
            keys.job(job_id),
            keys.queue(stream_class),
            keys.JOBS,
            keys.EVENTS,
            keys.job(minted_for or job_id),
            keys.queue(minted_class or stream_class),
            _reply(),
        ]
        argv: list[Any] = [
            self.delivery_ttl,
            repr(now),
            orjson.dumps(outcome),
            orjson.dumps(event),
            self.events_maxlen,
            action,
            conclusion or "",
            job_id,
            self.retention,
            orjson.dumps(dict(tombstone)) if tombstone else b"",
            "1" if dequeue_reason else "0",
            dequeue_reason,
            runner_name,
            "1" if smith_runner else "0",
            minted_for,
        ]
        async with errors(self.reach):
            res, acked = await self._group(self._record_update, ks, argv)
        return Recorded(str(res[0]), str(res[1]), acked)

    async def submit(self, job: Job) -> Job:
        """Queue a job that did not come from a webhook (operator API, ``smith run``)."""
        res = await self.record_queued(
            f"api:{job.id}", job, {"outcome": "queued", "job_id": job.id}, {"source": "api", "job_id": job.id}
        )
        if res.outcome != "queued":
            raise Conflict(f"job {job.id} already exists")
        return await self.get(job.id)

    async def _class_of(self, job_id: str) -> str | None:
        async with errors(self.reach):
            value = await self.r.hget(keys.job(job_id), "runner_class")
        return str(value) if value else None

    # -- agents -------------------------------------------------------------------------------------------

    async def lease(self, agent_id: str, classes: Sequence[str], wait_seconds: float) -> Lease | None:
        """Block up to ``wait_seconds`` for a job of one of ``classes``; the first one read becomes the lease.

        XREADGROUP hands each entry to exactly one consumer. An entry read together with the one taken is
        handed back to the queue unchanged (no attempt counted).
        """
        _consumer(agent_id)
        if not classes:
            return None
        missing = [c for c in classes if c not in self._groups_ready]
        if missing:
            await self.ensure_groups(missing)
        deadline = time.monotonic() + wait_seconds
        streams = {keys.queue(c): ">" for c in classes}
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(remaining * 1000)) if remaining > 0 else None
            async with errors(self.reach):
                try:
                    got = await self.blocking.xreadgroup(keys.GROUP, agent_id, streams, count=1, block=block_ms)
                except rexc.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    self._groups_ready.clear()  # the server lost its data (no AOF?): make the groups again
                    await self.ensure_groups(classes)
                    continue
            lease: Lease | None = None
            for stream, entries in got or []:
                for entry_id, fields in entries:
                    job_id = fields.get("job", "")
                    if lease is None:
                        lease = await self._take(agent_id, stream, entry_id, job_id)
                    else:
                        async with errors(self.reach):
                            await self._handback(
                                keys=[keys.job(job_id), stream, _reply()], args=[entry_id, repr(time.time())]
                            )
            if lease is not None:
                return lease
            if remaining <= 0 or block_ms is None:
                return None

    async def _take(self, agent_id: str, stream: str, entry_id: str, job_id: str) -> Lease | None:
        """CLAIM one entry read. A stale entry (the job was cancelled, finished or re-queued meanwhile) is
        dropped by the script itself: never from here after an empty reply, which a replay could also give."""
        async with errors(self.reach):
            flat = await self._claim(
                keys=[keys.job(job_id), stream, _reply()], args=[entry_id, agent_id, repr(time.time())]
            )
        return Lease(job_from_hash(_pairs(flat)), entry_id) if flat else None

    async def renew(self, agent_id: str, job_ids: Iterable[str]) -> dict[str, str]:
        """Renew this agent's leases; per job 'ok', 'cancel' or 'lost'."""
        _consumer(agent_id)
        out: dict[str, str] = {}
        now = repr(time.time())
        for job_id in job_ids:
            cls = await self._class_of(job_id)
            if cls is None:
                out[job_id] = "lost"
                continue
            async with errors(self.reach):
                out[job_id] = str(await self._renew(keys=[keys.job(job_id), keys.queue(cls)], args=[agent_id, now]))
        return out

    async def _as_owner(self, script: Any, agent_id: str, job_id: str, args: list[Any], new_state: str) -> str:
        """Run a script only the lease's holder may (KEYS: job, stream, reply); its outcome, or the refusal."""
        _consumer(agent_id)
        cls = await self._class_of(job_id)
        if cls is None:
            raise NotFound(f"job {job_id} not found")
        async with errors(self.reach):
            res = await script(keys=[keys.job(job_id), keys.queue(cls), _reply()], args=args)
        if res[0] == "missing":
            raise NotFound(f"job {job_id} not found")
        if res[0] == "not_owner":
            raise Conflict(f"job {job_id} is not leased to agent {agent_id} (state {res[1]})")
        if res[0] == "bad_transition":
            raise Conflict(f"job {job_id} cannot go from {res[1]} to {new_state}")
        return str(res[0])

    async def report(
        self, agent_id: str, job_id: str, state: JobState, *, reason: str = "", exit_code: int | None = None
    ) -> Job:
        code = "" if exit_code is None else exit_code
        args = [agent_id, state.value, repr(time.time()), reason, code, self.retention]
        await self._as_owner(self._report, agent_id, job_id, args, state.value)
        return await self.get(job_id)

    async def reclaim(self, classes: Iterable[str], lease_ttl: float, max_attempts: int) -> dict[str, int]:
        """Re-queue (or fail) jobs whose lease was not renewed for ``lease_ttl`` seconds.

        An entry's idle time counts any outage or failover too, when no agent could heartbeat: so nothing is
        reclaimed until Redis has been reachable from here for a whole lease TTL (``deferred`` says so)."""
        counts = {"requeued": 0, "failed": 0, "stale": 0}
        async with errors(self.reach):
            await self.r.ping()
        self.reach.answered()
        if self.reach.quiet_for() < lease_ttl:
            return counts | {"deferred": 1}
        min_idle = int(lease_ttl * 1000)
        for cls in classes:
            stream = keys.queue(cls)
            start = "0-0"
            while True:
                async with errors(self.reach):
                    try:
                        res = await self.r.xautoclaim(stream, keys.GROUP, keys.REAPER, min_idle, start, count=100)
                    except rexc.ResponseError as exc:
                        if "NOGROUP" in str(exc):
                            await self.ensure_groups([cls])
                            break
                        raise
                start, claimed = res[0], res[1]
                for entry_id, fields in claimed:
                    if not fields:
                        continue
                    job_id = fields.get("job", "")
                    out = await self._requeue_entry(
                        job_id, stream, entry_id, max_attempts, f"lease expired (no heartbeat for {lease_ttl:g}s)"
                    )
                    counts[out] = counts.get(out, 0) + 1
                if start in ("0-0", b"0-0"):
                    break
        return counts

    async def reopen(self, job_id: str, reason: str) -> str:
        """A lease-less 'running' job GitHub still shows queued goes back to its queue: 'reopened' or 'stale'."""
        cls = await self._class_of(job_id)
        if cls is None:
            return "stale"
        async with errors(self.reach):
            res = await self._reopen(
                keys=[keys.job(job_id), keys.queue(cls), _reply()], args=[repr(time.time()), reason]
            )
        return str(res[0])

    async def report_runner(
        self,
        agent_id: str,
        job_id: str,
        reported: str,
        *,
        lease_runner: str,
        max_releases: int,
        reason: str = "",
        exit_code: int | None = None,
    ) -> str:
        """The final report of a GitHub runner job's lease, read against what GitHub said (REPORT_RUNNER):
        'github', 'runner', 'elsewhere', 'requeued' (attempt not counted) or 'failed'."""
        code = "" if exit_code is None else exit_code
        args = [agent_id, reported, repr(time.time()), reason, code, self.retention, lease_runner, max_releases]
        return await self._as_owner(self._report_runner, agent_id, job_id, args, reported)

    async def requeue(self, job_id: str, entry: str, max_attempts: int, reason: str, *, count: bool = True) -> str:
        """Put a leased job back on its queue (counts as an attempt, failing it past ``max_attempts``; with
        ``count=False`` the attempt is given back)."""
        cls = await self._class_of(job_id)
        if cls is None:
            return "stale"
        return await self._requeue_entry(job_id, keys.queue(cls), entry, max_attempts, reason, count=count)

    async def _requeue_entry(
        self, job_id: str, stream: str, entry: str, max_attempts: int, reason: str, *, count: bool = True
    ) -> str:
        """One REQUEUE script call: 'requeued', 'failed' (past max_attempts), 'github' or 'stale'."""
        async with errors(self.reach):
            out = await self._requeue(
                keys=[keys.job(job_id), stream, _reply()],
                args=[entry, repr(time.time()), max_attempts, reason, self.retention, "0" if count else "1"],
            )
        return str(out[0])

    async def release_agent(
        self, agent_id: str, classes: Iterable[str], max_attempts: int, keep: set[str] | None = None
    ) -> dict[str, int]:
        """Re-queue every lease an agent holds but does not say it still runs (``keep``): on (re)register."""
        _consumer(agent_id)  # an empty consumer name would make XPENDING cover every agent's leases
        counts: dict[str, int] = {}
        for cls in classes:
            stream = keys.queue(cls)
            async with errors(self.reach):
                try:
                    pending = await self.r.xpending_range(
                        stream, keys.GROUP, min="-", max="+", count=1000, consumername=agent_id
                    )
                except rexc.ResponseError:
                    continue
            for p in pending:
                entry_id = p["message_id"]
                got = await self.r.xrange(stream, min=entry_id, max=entry_id)
                job_id = got[0][1].get("job", "") if got else ""
                if keep and job_id in keep:
                    continue
                out = await self._requeue_entry(
                    job_id, stream, entry_id, max_attempts, f"agent {agent_id} restarted while holding the lease"
                )
                counts[out] = counts.get(out, 0) + 1
        return counts

    # -- operators ----------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        async with errors(self.reach):
            h = await self.r.hgetall(keys.job(job_id))
        if not h:
            raise NotFound(f"job {job_id} not found")
        return job_from_hash(h)

    async def recent(
        self,
        *,
        limit: int = 50,
        state: str | None = None,
        repo: str | None = None,
        runner_class: str | None = None,
        since: float | None = None,
    ) -> list[Job]:
        """Newest first, filtered. Scans at most a few pages of the index, so filters stay cheap."""
        out: list[Job] = []
        offset, page = 0, max(limit * 2, 100)
        async with errors(self.reach):
            while len(out) < limit and offset < 20 * page:
                ids = await self.r.zrevrangebyscore(
                    keys.JOBS, "+inf", since if since is not None else "-inf", start=offset, num=page
                )
                if not ids:
                    break
                offset += len(ids)
                pipe = self.r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hgetall(keys.job(job_id))
                for h in await pipe.execute():
                    if not h:
                        continue
                    job = job_from_hash(h)
                    if state and job.state.value != state:
                        continue
                    if repo and job.repo != repo:
                        continue
                    if runner_class and job.runner_class != runner_class:
                        continue
                    out.append(job)
                    if len(out) >= limit:
                        break
        return out

    async def cancel(self, job_id: str, reason: str) -> str:
        cls = await self._class_of(job_id)
        if cls is None:
            raise NotFound(f"job {job_id} not found")
        async with errors(self.reach):
            res = await self._cancel(
                keys=[keys.job(job_id), keys.queue(cls), _reply()], args=[repr(time.time()), reason, self.retention]
            )
        if res[0] == "missing":
            raise NotFound(f"job {job_id} not found")
        if res[0] == "final":
            raise Conflict(f"job {job_id} already finished ({res[1]})")
        return str(res[0])

    async def queue_health(self, classes: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per class: depth (queued, not yet read), leases in flight, age of the oldest queued job."""
        out: dict[str, dict[str, Any]] = {}
        now_ms = int(time.time() * 1000)
        async with errors(self.reach):
            for cls in classes:
                stream = keys.queue(cls)
                depth, in_flight, oldest_age = 0, 0, None
                try:
                    groups = await self.r.xinfo_groups(stream)
                except rexc.ResponseError:
                    groups = []
                for g in groups:
                    if g["name"] == keys.GROUP:
                        in_flight = int(g.get("pending", 0))
                        lag = g.get("lag")
                        if lag is None:  # unknown once an entry not yet read was deleted (a cancel)
                            # every entry read and done is deleted, so what is left is queued or leased
                            lag = max(0, int(await self.r.xlen(stream)) - in_flight)
                        depth = int(lag)
                        last = g.get("last-delivered-id", "0-0")
                        nxt = await self.r.xrange(stream, min=f"({last}", count=1)
                        if nxt:
                            oldest_age = max(0.0, (now_ms - int(nxt[0][0].split("-")[0])) / 1000)
                out[cls] = {
                    "depth": depth,
                    "leases_in_flight": in_flight,
                    "oldest_queued_age_seconds": oldest_age,
                }
        return out

    # -- hosts --------------------------------------------------------------------------------------------

    async def put_host(self, agent_id: str, info: Mapping[str, Any], ttl_seconds: float) -> None:
        now = time.time()
        async with errors(self.reach):
            pipe = self.r.pipeline(transaction=True)
            pipe.set(
                keys.host(agent_id),
                orjson.dumps({**info, "agent_id": agent_id, "seen_at": now}),
                px=int(ttl_seconds * 1000),
            )
            pipe.zadd(keys.HOSTS, {agent_id: now})
            await pipe.execute()

    async def get_host(self, agent_id: str) -> dict[str, Any] | None:
        async with errors(self.reach):
            raw = await self.r.get(keys.host(agent_id))
        return orjson.loads(raw) if raw else None

    async def hosts_alive(self, ttl_seconds: float) -> list[dict[str, Any]]:
        cutoff = time.time() - ttl_seconds
        async with errors(self.reach):
            ids = await self.r.zrangebyscore(keys.HOSTS, cutoff, "+inf")
            raws = await self.r.mget([keys.host(i) for i in ids]) if ids else []
        return [orjson.loads(r) for r in raws if r]

    async def forget_agents(self, classes: Iterable[str], gone_seconds: float) -> int:
        """Trim the hosts index and delete the stream consumers of agents gone for ``gone_seconds``: no lease
        held, host record expired (checked atomically, DROP_CONSUMER). Returns the consumers deleted."""
        dropped = 0
        async with errors(self.reach):
            await self.r.zremrangebyscore(keys.HOSTS, "-inf", time.time() - gone_seconds)
            for cls in classes:
                stream = keys.queue(cls)
                try:
                    consumers = await self.r.xinfo_consumers(stream, keys.GROUP)
                except rexc.ResponseError:
                    continue
                for c in consumers:
                    if int(c.get("pending", 0)) or int(c.get("idle", 0)) < gone_seconds * 1000:
                        continue
                    name = str(c["name"])
                    dropped += int(await self._drop_consumer(keys=[stream, keys.host(name)], args=[name]))
        return dropped


def runner_classes_for(
    classes: Iterable[RunnerClass], host_labels: Iterable[str], vcpus_free: int, memory_free_mib: int
) -> list[str]:
    """The classes a host can take now: it has their labels (or none were set) and room for their size."""
    labels = {label.lower() for label in host_labels}
    out = []
    for rc in classes:
        if rc.vcpus > vcpus_free or rc.memory_mib > memory_free_mib:
            continue
        if labels and rc.name.lower() not in labels:
            continue
        out.append(rc.name)
    return out
