"""Group commit: script calls made while a write is in flight go out together as one pipeline.

With ``appendfsync always`` Redis answers a write only after it is on disk, and a delivery's 202 waits for that
answer. Sent one by one on separate connections, concurrent deliveries each pay a round trip, a pooled
connection and the client's per-command work. Here the first call starts a write at the next turn of the event
loop; calls made while it is in flight wait and then leave together as the next pipeline (one connection, one
packet, replies after one fsync). Each script stays atomic and the pipeline keeps the callers' order, so the
same delivery twice in one group is recorded by the first and answered ``duplicate`` for the second. A caller's
answer still comes only after Redis has answered its own script: nothing is acknowledged before it is written.

With a ``Durability`` other than ``local`` the pipeline ends with one ``WAIT`` (replicas) or ``WAITAOF`` (the
server's append-only file), which covers every script of the group: the connection's writes are all before it.
Each caller learns whether that wait was acknowledged in full (``acked``); a short one is for the caller to make
up for (the control plane spools the delivery to disk as well).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.commands.core import AsyncScript

from smith.logging import get_logger

log = get_logger("smith.redis.group")

Call = tuple[AsyncScript, list[Any], list[Any], "asyncio.Future[tuple[Any, bool]]"]


@dataclass(frozen=True)
class Durability:
    """What a write waits for before it is answered: the server itself (``local``), ``replicas`` copies of it
    (``WAIT``), or the server's append-only file on disk (``aof``, ``WAITAOF``; Redis 7.2+, Valkey 8+)."""

    mode: Literal["local", "replicas", "aof"] = "local"
    replicas: int = 1
    timeout_ms: int = 1000

    def command(self) -> tuple[Any, ...] | None:
        if self.mode == "replicas":
            return ("WAIT", self.replicas, self.timeout_ms)
        if self.mode == "aof":
            return ("WAITAOF", 1, 0, self.timeout_ms)
        return None

    def acked(self, reply: Any) -> bool:
        """Whether a ``command()`` reply reached what was asked (an error reply did not)."""
        if self.mode == "local":
            return True
        if isinstance(reply, BaseException):
            return False
        if self.mode == "replicas":
            return int(reply) >= self.replicas
        return int(reply[0]) >= 1


class ScriptGroup:
    """Run ``AsyncScript`` calls grouped; at most ``max_in_flight`` pipelines at a time."""

    def __init__(self, redis: aioredis.Redis, max_in_flight: int = 1, durability: Durability | None = None) -> None:
        self.r = redis
        self.durability = durability or Durability()
        self.max_in_flight = max_in_flight
        self._pending: list[Call] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> tuple[Any, bool]:
        """The script's reply, and whether the group's wait for durability was acknowledged in full."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, bool]] = loop.create_future()
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
            results, acked = await self._pipeline(batch)
            for (_, _, _, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result((res, acked))
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

    async def _pipeline(self, batch: list[Call]) -> tuple[list[Any], bool]:
        results, acked = await self._evalsha(batch)
        refused = [i for i, res in enumerate(results) if isinstance(res, rexc.ReadOnlyError)]
        if refused:  # a demoted primary: drop its connections and send those again (they did not run)
            await self.r.connection_pool.disconnect(inuse_connections=False)
            again, acked_again = await self._evalsha([batch[i] for i in refused])
            acked = acked and acked_again
            for i, res in zip(refused, again, strict=True):
                results[i] = res
        missing = [i for i, res in enumerate(results) if isinstance(res, rexc.NoScriptError)]
        if missing:  # a restarted or flushed server: load the scripts and send those again (they did not run)
            for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                script.sha = await self.r.script_load(script.script)
            again, acked_again = await self._evalsha([batch[i] for i in missing])
            acked = acked and acked_again
            for i, res in zip(missing, again, strict=True):
                results[i] = res
        return results, acked

    async def _evalsha(self, batch: list[Call]) -> tuple[list[Any], bool]:
        pipe = self.r.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        wait = self.durability.command()
        if wait is not None:
            pipe.execute_command(*wait)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if wait is None:
            return results, True
        reply = results[-1]
        acked = self.durability.acked(reply)
        if not acked:
            d = self.durability
            log.warning(
                "redis durability wait fell short",
                mode=d.mode,
                asked=d.replicas if d.mode == "replicas" else "local aof fsync",
                got=repr(reply),
                timeout_ms=d.timeout_ms,
                writes=len(batch),
            )
        return results[:-1], acked
