"""Each job (each matrix instance) of a built-in workflow run as a GitHub check run, named
``<workflow> / <job>`` as GitHub Actions names them: ``queued`` when its Smith job is queued, ``in_progress``
when its agent starts it, ``completed`` with its conclusion. The check run's id is kept in the run record
(``k:<smith job id>``), so a restarted control plane updates the same one; a step that finds none (a crash
between creating it and keeping its id, or an agent that reported the job running before its queued check run
was made) creates it in the state it reports, and a late ``queued`` never moves a check run back.

An App installed without "Checks: write" gets 403: then each job is a commit status with the same name instead
(pending, then success / failure / error). The refusal is remembered per repository in this process for
``RETRY_CHECKS_AFTER`` (10 minutes): after that check runs are tried again, so granting the permission takes
effect without a restart. A job instance reported as a commit status stays one to its end (``STATUS`` in place of
its check run's id), so no status is left pending. Any other failure to report is logged: a report never stops
a run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from smith.adapters.redis.wfruns import RedisRuns
from smith.errors import SmithError
from smith.logging import get_logger

log = get_logger("smith.control.wfchecks")

STATUS_OF = {"success": "success", "skipped": "success", "failure": "failure", "cancelled": "error"}
DESCRIPTION = {"queued": "queued", "in_progress": "running"}
RETRY_CHECKS_AFTER = 600.0  # seconds a repository's 403 on check runs is believed before they are tried again
STATUS = "status"  # kept for a job instance instead of a check run's id: it is reported as a commit status


class CheckClient(Protocol):
    async def create_check_run(
        self, repo: str, head_sha: str, name: str, fields: dict[str, Any], installation_id: int = 0
    ) -> int: ...

    async def update_check_run(
        self, repo: str, check_run_id: int, fields: dict[str, Any], installation_id: int = 0
    ) -> None: ...

    async def commit_status(
        self, repo: str, sha: str, state: str, context: str, description: str, installation_id: int = 0
    ) -> None: ...


def _now() -> str:
    return datetime.fromtimestamp(int(time.time()), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobChecks:
    def __init__(
        self,
        client: CheckClient | None,
        runs: RedisRuns,
        clock: Callable[[], float] = time.monotonic,
        retry_after: float = RETRY_CHECKS_AFTER,
    ) -> None:
        self.client = client
        self.runs = runs
        self.clock = clock
        self.retry_after = retry_after
        self.denied: dict[str, float] = {}  # repository -> when its installation refused check runs (403)
        self._locks: dict[str, asyncio.Lock] = {}

    def _refused(self, repo: str) -> bool:
        """Whether check runs are not tried for ``repo``: a 403 less than ``retry_after`` ago."""
        when = self.denied.get(repo)
        if when is not None and self.clock() - when >= self.retry_after:
            del self.denied[repo]
            return False
        return when is not None

    async def report(
        self,
        run_id: str,
        rec: dict[str, str],
        smith_id: str,
        key: str,
        status: str,
        conclusion: str = "",
        why: str = "",
    ) -> None:
        """Job instance ``smith_id`` (display name ``key``) is ``status`` (queued | in_progress | completed, with
        ``conclusion``)."""
        if self.client is None:
            return
        repo, sha, installation = rec["repo"], rec.get("head_sha") or rec["sha"], int(rec.get("installation_id") or 0)
        name = f"{rec.get('name') or rec['file']} / {key}"
        try:
            if not self._refused(repo.lower()):
                try:
                    if await self._check(run_id, repo, sha, name, smith_id, installation, status, conclusion, why):
                        return
                except SmithError as exc:
                    if getattr(exc, "status", None) != 403:
                        raise
                    log.warning("check runs refused (403): reporting jobs as commit statuses", repo=repo)
                    self.denied[repo.lower()] = self.clock()
            state = STATUS_OF.get(conclusion, "failure") if status == "completed" else "pending"
            text = (why or conclusion) if status == "completed" else DESCRIPTION[status]
            await self.client.commit_status(repo, sha, state, name, text[:140], installation)
            await self.runs.keep_check(run_id, smith_id, STATUS)  # a commit status to its end
        except SmithError as exc:
            log.warning("job not reported to GitHub", repo=repo, job=smith_id, status=status, error=exc.message)

    async def _check(
        self,
        run_id: str,
        repo: str,
        sha: str,
        name: str,
        smith_id: str,
        installation: int,
        status: str,
        conclusion: str,
        why: str,
    ) -> bool:
        """Report as a check run; False for an instance that is a commit status (``STATUS``)."""
        assert self.client is not None
        fields: dict[str, Any] = {"status": status}
        if status == "in_progress":
            fields["started_at"] = _now()
        if status == "completed":
            fields.update(conclusion=conclusion, completed_at=_now())
            fields["output"] = {"title": f"{name}: {conclusion}", "summary": why or f"The job's result: {conclusion}."}
        async with self._locks.setdefault(smith_id, asyncio.Lock()):  # one create per instance in this process
            try:
                known = await self.runs.check_of(run_id, smith_id)
                if known == STATUS:
                    return False
                if known and status == "queued":  # its agent reported first: never back to queued
                    return True
                if known:
                    await self.client.update_check_run(repo, int(known), fields, installation)
                    return True
                fields["external_id"] = smith_id
                made = await self.client.create_check_run(repo, sha, name, fields, installation)
                await self.runs.keep_check(run_id, smith_id, str(made))
                return True
            finally:
                if status == "completed":
                    self._locks.pop(smith_id, None)
