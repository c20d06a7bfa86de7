"""How GitHub's API has been answering the control plane, and what it does about it.

A failure to mint a runner is never the job's fault: the job goes back to its queue with its attempt given back,
and runner jobs are not handed out again until a pause has passed (GitHub's ``retry_after`` when it gives one,
else 1, 2, 4 ... seconds up to ``SMITH_GITHUB_RETRY_MAX_SECONDS``). 401, 403 (not a rate limit) and 404 mean a
misconfigured App (key, permissions, installation): they raise a visible alarm, an ERROR log line and the
``github`` field of the operator's queue status, until GitHub answers again.

Shared by the replicas through Redis (``smith.adapters.redis.github``): a pause one replica starts holds every
replica's leases, an alarm one raises every replica shows (kept ``ALARM_TTL`` past the last failure), and the
first answer any replica gets clears both. The scopes runners were minted in are recorded there too, so every
replica's sweep covers them after restarts. While Redis does not answer, each replica keeps its own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from smith.adapters.redis.github import GitHubState
from smith.errors import RateLimited, SmithError
from smith.logging import get_logger

log = get_logger("smith.control")

ALARM_STATUSES = {401: "bad credentials", 403: "missing permission", 404: "not found (installation or repository)"}
ALARM_TTL = 3600.0


class GitHubHealth:
    def __init__(
        self, max_pause: float = 300.0, clock: Callable[[], float] = time.monotonic, redis: Any = None
    ) -> None:
        self.max_pause = max_pause
        self.clock = clock
        self.shared = GitHubState(redis) if redis is not None else None
        self.failures = 0  # this replica's own, used while Redis does not answer
        self.paused_until = 0.0
        self.alarm: dict[str, Any] | None = None
        self._scopes_kept: dict[str, int] = {}

    async def failed(self, exc: SmithError) -> float:
        """Record a failure; the pause (seconds) before runner jobs are handed out again."""
        self.failures += 1
        failures = self.failures
        if self.shared is not None:
            with contextlib.suppress(SmithError):
                failures = await self.shared.failure(self.max_pause * 2 + 60)
        pause = exc.retry_after if exc.retry_after else 2.0 ** min(failures - 1, 16)
        pause = min(pause, self.max_pause)
        self.paused_until = self.clock() + pause
        status = getattr(exc, "status", None)
        if status in ALARM_STATUSES and not isinstance(exc, RateLimited):
            alarm = {"status": status, "meaning": ALARM_STATUSES[status], "message": exc.message, "since": time.time()}
            first = self.alarm is None
            self.alarm = alarm
            if self.shared is not None:
                with contextlib.suppress(SmithError):
                    first = await self.shared.raise_alarm(alarm, ALARM_TTL)
            if first:
                log.error(
                    "GitHub refuses the App: check its key, permissions and installation",
                    status=status,
                    meaning=ALARM_STATUSES[status],
                    error=exc.message,
                )
        if self.shared is not None:
            with contextlib.suppress(SmithError):
                await self.shared.pause(pause)
        return pause

    async def ok(self, scopes: Mapping[str, int] | None = None) -> None:
        """GitHub answered: the pause and alarm end (for every replica); ``scopes`` runners were minted in are
        recorded for the sweep (those not recorded yet)."""
        was = self.alarm
        self.failures, self.paused_until, self.alarm = 0, 0.0, None
        if self.shared is not None:
            try:
                was = await self.shared.clear() or was
                new = {k: v for k, v in (scopes or {}).items() if self._scopes_kept.get(k) != v}
                await self.shared.remember_scopes(new)
                self._scopes_kept.update(new)
            except SmithError:
                pass
        if was is not None:
            log.warning("GitHub answers the App again: alarm cleared", was=was["meaning"])

    async def pause_left(self) -> float:
        local = max(0.0, self.paused_until - self.clock())
        if self.shared is None:
            return local
        try:
            return await self.shared.pause_left()
        except SmithError:
            return local

    async def view(self) -> dict[str, Any]:
        alarm, failures, paused = self.alarm, self.failures, max(0.0, self.paused_until - self.clock())
        if self.shared is not None:
            with contextlib.suppress(SmithError):
                alarm, failures, paused = await self.shared.view()
        return {"alarm": alarm, "failures": failures, "paused_seconds": round(paused, 3)}

    async def scopes(self, mine: Mapping[str, int]) -> dict[str, int]:
        """Every scope runners were minted in, by any replica (``mine``: this replica's, recorded now)."""
        if self.shared is None:
            return dict(mine)
        try:
            await self.shared.remember_scopes(mine)
            return {**await self.shared.scopes(), **mine}
        except SmithError:
            return dict(mine)
