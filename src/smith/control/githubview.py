"""GitHub's view wins for runner jobs: before a runner is minted for a leased job, ask GitHub (the jobs API)
whether the job still waits for one. A job GitHub already shows in progress or completed (its webhook lost,
late, or the job cancelled) gets no runner: what GitHub said is recorded, and the lease ends by it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from smith.control import webhooks
from smith.domain.jobs import Job
from smith.errors import SmithError
from smith.logging import get_logger
from smith.ports import RunnerCredentials

if TYPE_CHECKING:
    from smith.control.service import ControlPlane

log = get_logger("smith.control")


async def already_taken(plane: ControlPlane, credentials: RunnerCredentials, agent_id: str, job: Job) -> bool:
    """True when GitHub shows ``job`` in progress or completed: the lease has then ended (REPORT_RUNNER)."""
    try:
        seen = await credentials.job_state(job)
    except SmithError as exc:  # the check is a help, not a gate: mint anyway
        log.warning("could not ask GitHub for the job's state", job_id=job.id, error=exc.message)
        return False
    if seen is None:
        return False
    status, conclusion, runner = seen
    if status not in ("in_progress", "completed"):
        return False
    await record(plane, job, status, conclusion, runner)
    outcome = await plane.jobs.report_runner(
        agent_id,
        job.id,
        "cancelled",
        lease_runner=plane.runner_name(job),
        max_releases=plane.settings.max_runner_releases,
        reason=f"GitHub shows it {status} before a runner was made for it",
    )
    log.info("job already taken on GitHub: no runner minted", job_id=job.id, status=status, outcome=outcome)
    return True


async def resolve_waiting(plane: ControlPlane, credentials: RunnerCredentials, older_than: float) -> dict[str, int]:
    """Jobs Smith holds as 'running' with no lease (a Smith runner ran them, or ran a job GitHub has not named)
    wait for a webhook; one lost would leave them there for ever, and a job GitHub still shows queued would never
    get a runner. Past ``older_than`` seconds, ask the jobs API and follow it."""
    counts = {"reopened": 0, "recorded": 0}
    now = time.time()
    for job in await plane.jobs.recent(limit=200, state="running"):
        if job.agent_id or job.source != "github" or now - job.updated_at < older_than:
            continue
        try:
            seen = await credentials.job_state(job)
        except SmithError as exc:
            log.warning("could not ask GitHub for a waiting job's state", job_id=job.id, error=exc.message)
            continue
        if seen is None:
            continue
        status, conclusion, runner = seen
        if status in ("queued", "waiting", "requested", "pending"):
            if await plane.jobs.reopen(job.id, "GitHub still shows it queued: queued again") == "reopened":
                counts["reopened"] += 1
        elif status in ("in_progress", "completed"):
            await record(plane, job, status, conclusion, runner)
            counts["recorded"] += 1
    if counts["reopened"] or counts["recorded"]:
        log.info("waiting jobs resolved from GitHub's jobs API", **counts)
    return counts


async def record(plane: ControlPlane, job: Job, status: str, conclusion: str, runner: str) -> None:
    """What the jobs API said, recorded as its webhook would have been (once per job, lease and status)."""
    deployment = plane.settings.deployment_id
    base = {"job_id": job.id, "source": "jobs-api", "received_at": time.time()}
    await plane.jobs.record_update(
        f"jobs-api:{job.id}:{job.leases}:{status}",
        job.id,
        job.runner_class,
        status,
        conclusion,
        {**base, "outcome": "recorded"},
        {**base, "action": status},
        None,
        "",
        runner,
        mine := webhooks.owned(runner, deployment),
        webhooks.minted_for(runner) if mine else "",
    )
