"""How GitHub's API has been answering the control plane, and what it does about it.

A failure to mint a runner is never the job's fault: the job goes back to its queue with its attempt given back,
and runner jobs are not handed out again until a pause has passed (GitHub's ``retry_after`` when it gives one,
else 1, 2, 4 ... seconds up to ``SMITH_GITHUB_RETRY_MAX_SECONDS``). 401, 403 (not a rate limit) and 404 mean a
misconfigured App (key, permissions, installation): they raise a visible alarm, an ERROR log line and the
``github`` field of the operator's queue status, until GitHub answers again. Per replica, in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from smith.errors import RateLimited, SmithError
from smith.logging import get_logger

log = get_logger("smith.control")

ALARM_STATUSES = {401: "bad credentials", 403: "missing permission", 404: "not found (installation or repository)"}


class GitHubHealth:
    def __init__(self, max_pause: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pause = max_pause
        self.clock = clock
        self.failures = 0
        self.paused_until = 0.0
        self.alarm: dict[str, Any] | None = None

    def failed(self, exc: SmithError) -> float:
        """Record a failure; the pause (seconds) before runner jobs are handed out again."""
        self.failures += 1
        pause = exc.retry_after if exc.retry_after else 2.0 ** min(self.failures - 1, 16)
        pause = min(pause, self.max_pause)
        self.paused_until = self.clock() + pause
        status = getattr(exc, "status", None)
        if status in ALARM_STATUSES and not isinstance(exc, RateLimited):
            first = self.alarm is None
            self.alarm = {
                "status": status,
                "meaning": ALARM_STATUSES[status],
                "message": exc.message,
                "since": time.time(),
            }
            if first:
                log.error(
                    "GitHub refuses the App: check its key, permissions and installation",
                    status=status,
                    meaning=ALARM_STATUSES[status],
                    error=exc.message,
                )
        return pause

    def ok(self) -> None:
        if self.alarm is not None:
            log.warning("GitHub answers the App again: alarm cleared", was=self.alarm["meaning"])
        self.failures, self.paused_until, self.alarm = 0, 0.0, None

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    def view(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "failures": self.failures, "paused_seconds": round(self.pause_left(), 3)}
