"""Group commit: script calls made while a write is in flight go out together as one pipeline.

With ``appendfsync always`` Redis answers a write only after it is on disk, and a delivery's 202 waits for that
answer. Sent one by one on separate connections, concurrent deliveries each pay a round trip, a pooled
connection and the client's per-command work. Here the first call starts a write at the next turn of the event
loop; calls made while it is in flight wait and then leave together as the next pipeline (one connection, one
packet, replies after one fsync). Each script stays atomic and the pipeline keeps the callers' order, so the
same delivery twice in one group is recorded by the first and answered ``duplicate`` for the second. A caller's
answer still comes only after Redis has answered its own script: nothing is acknowledged before it is written.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.commands.core import AsyncScript

Call = tuple[AsyncScript, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptGroup:
    """Run ``AsyncScript`` calls grouped; at most ``max_in_flight`` pipelines at a time."""

    def __init__(self, redis: aioredis.Redis, max_in_flight: int = 1) -> None:
        self.r = redis
        self.max_in_flight = max_in_flight
        self._pending: list[Call] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self.max_in_flight:
            return  # the write in flight sends what is pending when it is done
        batch, self._pending = self._pending, []
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            results = await self._pipeline(batch)
            for (_, _, _, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        except BaseException as exc:  # every waiter gets the error; a cancelled write cancels its waiters
            for *_, fut in batch:
                if fut.done():
                    continue
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._flush()

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        results = await self._evalsha(batch)
        refused = [i for i, res in enumerate(results) if isinstance(res, rexc.ReadOnlyError)]
        if refused:  # a demoted primary: drop its connections and send those again (they did not run)
            await self.r.connection_pool.disconnect(inuse_connections=False)
            for i, res in zip(refused, await self._evalsha([batch[i] for i in refused]), strict=True):
                results[i] = res
        missing = [i for i, res in enumerate(results) if isinstance(res, rexc.NoScriptError)]
        if missing:  # a restarted or flushed server: load the scripts and send those again (they did not run)
            for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                script.sha = await self.r.script_load(script.script)
            for i, res in zip(missing, await self._evalsha([batch[i] for i in missing]), strict=True):
                results[i] = res
        return results

    async def _evalsha(self, batch: list[Call]) -> list[Any]:
        pipe = self.r.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
