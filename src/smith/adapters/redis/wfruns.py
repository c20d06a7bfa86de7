"""Built-in workflow runs in Redis: one hash per run (keys.wf_run) beside the job records, and the set of
unfinished runs (keys.WF_RUNS). Every change is one replayable script (wfscripts.py); reads are plain HGETALLs.
The control plane's logic (which job is ready, matrix, results) is in smith/control/workflows.py."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from smith.adapters.redis import keys, replay, wfscripts
from smith.adapters.redis.connect import Reachability, errors


def _reply() -> str:
    return keys.reply(replay.token())


class RedisRuns:
    def __init__(self, redis: aioredis.Redis, *, retention_seconds: int = 7 * 24 * 3600) -> None:
        self.r: Any = redis
        self.retention = retention_seconds
        self.reach = Reachability()
        self._create = redis.register_script(wfscripts.CREATE)
        self._start = redis.register_script(wfscripts.START)
        self._instance = redis.register_script(wfscripts.INSTANCE)
        self._job_done = redis.register_script(wfscripts.JOB_DONE)
        self._run_done = redis.register_script(wfscripts.RUN_DONE)
        self._mark = redis.register_script(wfscripts.MARK)
        self._enter = redis.register_script(wfscripts.ENTER)
        self._leave = redis.register_script(wfscripts.LEAVE)
        self._trigger = redis.register_script(wfscripts.TRIGGER)
        self._trigger_done = redis.register_script(wfscripts.TRIGGER_DONE)

    async def create(self, run_id: str, fields: Mapping[str, str]) -> bool:
        """A new run (state running); False if a run with this id exists (a redelivered webhook)."""
        argv: list[str] = [run_id, repr(time.time())]
        for k, v in {**fields, "id": run_id, "state": "running", "created_at": repr(time.time())}.items():
            argv += [k, v]
        async with errors(self.reach):
            return bool(await self._create(keys=[keys.wf_run(run_id), keys.WF_RUNS, _reply()], args=argv))

    async def get(self, run_id: str) -> dict[str, str]:
        async with errors(self.reach):
            return dict(await self.r.hgetall(keys.wf_run(run_id)))

    async def unfinished(self, limit: int = 1000) -> list[str]:
        async with errors(self.reach):
            return [str(x) for x in await self.r.zrange(keys.WF_RUNS, 0, limit - 1)]

    async def start_job(self, run_id: str, job: str, instances: Mapping[str, str]) -> bool:
        """Mark a waiting job started with its instances (smith job id -> spec JSON); False if it was not
        waiting (another caller started it)."""
        argv = [job, str(len(instances))]
        for smith_id, spec in instances.items():
            argv += [smith_id, spec]
        async with errors(self.reach):
            return bool(await self._start(keys=[keys.wf_run(run_id), _reply()], args=argv))

    async def instance_done(self, run_id: str, job: str, index: int, result: str) -> bool:
        async with errors(self.reach):
            return bool(await self._instance(keys=[keys.wf_run(run_id), _reply()], args=[job, index, result]))

    async def job_done(self, run_id: str, job: str, result: str) -> bool:
        async with errors(self.reach):
            return bool(await self._job_done(keys=[keys.wf_run(run_id), _reply()], args=[job, result]))

    async def run_done(self, run_id: str, conclusion: str) -> bool:
        args: list[str | int] = [run_id, conclusion, repr(time.time()), self.retention]
        async with errors(self.reach):
            return bool(await self._run_done(keys=[keys.wf_run(run_id), keys.WF_RUNS, _reply()], args=args))

    async def mark(self, run_id: str, fields: Mapping[str, str]) -> bool:
        """Set fields of an existing run (a value "" deletes its field); False if there is no such run."""
        argv = [x for kv in fields.items() for x in kv]
        async with errors(self.reach):
            return bool(await self._mark(keys=[keys.wf_run(run_id), _reply()], args=argv))

    async def enter(self, repo: str, group: str, run_id: str, cancel_in_progress: bool) -> tuple[str, list[str]]:
        """Ask run ``run_id``'s concurrency group: ('run' | 'wait' | 'cancelled', the runs this displaced)."""
        args: list[str | int] = [run_id, "1" if cancel_in_progress else "0", self.retention]
        async with errors(self.reach):
            out = await self._enter(keys=[keys.wf_group(repo, group), _reply()], args=args)
        return str(out[0]), [str(x) for x in out[1:]]

    async def leave(self, repo: str, group: str, run_id: str) -> str:
        """Run ``run_id`` leaves its group: the pending run that runs now, or ''."""
        async with errors(self.reach):
            return str(await self._leave(keys=[keys.wf_group(repo, group), _reply()], args=[run_id]) or "")

    async def check_of(self, run_id: str, smith_id: str) -> str | None:
        """The GitHub check run kept for a job instance (control/wfchecks.py), if any."""
        async with errors(self.reach):
            got = await self.r.hget(keys.wf_run(run_id), f"k:{smith_id}")
        return str(got) if got else None

    async def keep_check(self, run_id: str, smith_id: str, check_id: str) -> None:
        async with errors(self.reach):
            await self.r.hset(keys.wf_run(run_id), f"k:{smith_id}", check_id)

    # -- triggers: a delivery recorded at once, turned into runs by the control plane's trigger worker --------

    async def trigger(self, delivery: str, fields: Mapping[str, str]) -> bool:
        """Record a delivery to be turned into runs; False if it was recorded before (a redelivery)."""
        now = repr(time.time())
        argv: list[str] = [delivery, now]
        for k, v in {**fields, "delivery": delivery, "received_at": now}.items():
            argv += [k, v]
        ks = [keys.wf_trigger(delivery), keys.WF_TRIGGERS, _reply()]
        async with errors(self.reach):
            return bool(await self._trigger(keys=ks, args=argv))

    async def get_trigger(self, delivery: str) -> dict[str, str]:
        async with errors(self.reach):
            return dict(await self.r.hgetall(keys.wf_trigger(delivery)))

    async def pending_triggers(self, limit: int = 100) -> list[str]:
        """Deliveries whose runs are not started yet, oldest first."""
        async with errors(self.reach):
            return [str(x) for x in await self.r.zrange(keys.WF_TRIGGERS, 0, limit - 1)]

    async def trigger_done(self, delivery: str, state: str, runs: list[str], error: str = "") -> bool:
        """Settle a trigger (done: its runs exist; failed: none will); it is kept as long as a run record."""
        args: list[str | int] = [delivery, state, orjson.dumps(runs).decode(), error, self.retention]
        ks = [keys.wf_trigger(delivery), keys.WF_TRIGGERS, _reply()]
        async with errors(self.reach):
            return bool(await self._trigger_done(keys=ks, args=args))
