"""GitHub's state that every control-plane replica shares, in Redis: the scopes runners were minted in (what the
runner sweep lists, whichever replica minted and however often they restarted), and the pause and alarm that
follow a failed GitHub call (``smith.control.githubhealth``). Keys in ``keys.py``; all carry the ``{smith}``
tag. Redis errors are raised as ``smith.errors.Unavailable``/``StoreFailure`` (``connect.translate``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis.exceptions as rexc

from smith.adapters.redis import keys
from smith.adapters.redis.connect import translate


class GitHubState:
    def __init__(self, redis: Any) -> None:
        self.r = redis

    async def remember_scopes(self, scopes: Mapping[str, int]) -> None:
        """Record where runners were minted (scope key -> installation id)."""
        if scopes:
            await self._call(self.r.hset(keys.GITHUB_SCOPES, mapping={k: str(v) for k, v in scopes.items()}))

    async def scopes(self) -> dict[str, int]:
        found = await self._call(self.r.hgetall(keys.GITHUB_SCOPES))
        return {str(k): int(v) for k, v in found.items() if str(v).isdigit()}

    async def forget_scope(self, scope: str) -> None:
        await self._call(self.r.hdel(keys.GITHUB_SCOPES, scope))

    async def failure(self, ttl: float) -> int:
        """One more failure in a row; how many (the count lives ``ttl`` seconds past the last)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(keys.GITHUB_FAILURES)
        pipe.expire(keys.GITHUB_FAILURES, max(1, int(ttl)))
        count, _ = await self._call(pipe.execute())
        return int(count)

    async def pause(self, seconds: float) -> None:
        """No runner is minted for ``seconds`` (a longer pause already set is kept)."""
        ms = max(1, int(seconds * 1000))
        if await self._call(self.r.pttl(keys.GITHUB_PAUSE)) < ms:
            await self._call(self.r.set(keys.GITHUB_PAUSE, "1", px=ms))

    async def pause_left(self) -> float:
        return max(0, int(await self._call(self.r.pttl(keys.GITHUB_PAUSE)))) / 1000

    async def raise_alarm(self, alarm: dict[str, Any], ttl: float) -> bool:
        """Set the alarm (kept ``ttl`` seconds past the last failure); True when there was none."""
        old = await self._call(self.r.set(keys.GITHUB_ALARM, json.dumps(alarm), ex=max(1, int(ttl)), get=True))
        return old is None

    async def clear(self) -> dict[str, Any] | None:
        """GitHub answered: no pause, no failures, no alarm; the alarm that was raised, if any."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(keys.GITHUB_ALARM)
        pipe.delete(keys.GITHUB_ALARM, keys.GITHUB_PAUSE, keys.GITHUB_FAILURES)
        alarm, _ = await self._call(pipe.execute())
        return json.loads(alarm) if alarm else None

    async def view(self) -> tuple[dict[str, Any] | None, int, float]:
        """(alarm, failures, pause seconds left)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(keys.GITHUB_ALARM)
        pipe.get(keys.GITHUB_FAILURES)
        pipe.pttl(keys.GITHUB_PAUSE)
        alarm, failures, pttl = await self._call(pipe.execute())
        return (json.loads(alarm) if alarm else None), int(failures or 0), max(0, int(pttl)) / 1000

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (rexc.RedisError, OSError) as exc:
            raise translate(exc) from exc
