"""The runner sweep: removes this deployment's runners that GitHub shows offline and idle and that no live
lease is waiting for (a runner minted for a lease that expired, for a lease cancelled after minting, one whose
delete was refused while it was busy, or one left by a crash). Runners of other deployments, busy or online
ones, and the runner of a lease still booting its VM are never touched. Needs ``SMITH_DEPLOYMENT_ID``: without
it two deployments on one organisation could not tell their runners apart, so nothing is swept. The scopes it
lists are every replica's (kept in Redis: ``GitHubHealth.scopes``), not only those this one minted in since it
started."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smith.control import webhooks
from smith.domain.jobs import JobState
from smith.errors import NotFound, SmithError
from smith.logging import get_logger

if TYPE_CHECKING:
    from smith.control.service import ControlPlane

log = get_logger("smith.control")


async def sweep_runners(plane: ControlPlane) -> dict[str, int]:
    counts = {"removed": 0, "kept": 0, "failed": 0}
    deployment, creds = plane.settings.deployment_id, plane.credentials
    if not deployment or creds is None:
        return counts
    scopes = await plane.github.scopes(creds.minted_scopes())  # every replica's, since any restart
    for runner in await creds.minted_runners(scopes):
        name = str(runner.get("name", ""))
        if not webhooks.owned(name, deployment) or runner.get("busy") or runner.get("status") != "offline":
            continue
        if await _lease_waits_for(plane, name):
            counts["kept"] += 1
            continue
        try:
            removed = await creds.remove_listed(runner)
        except SmithError as exc:  # 422: it took a job meanwhile; the next sweep sees it again
            counts["failed"] += 1
            log.info("runner sweep could not remove a runner", runner=name, error=exc.message)
            continue
        counts["removed"] += int(removed)
    if counts["removed"] or counts["failed"]:
        log.info("runner sweep", **counts)
    return counts


async def _lease_waits_for(plane: ControlPlane, name: str) -> bool:
    """True while the job the runner was minted for holds a live lease whose runner this is (its VM may still
    be booting: its runner is offline until it starts)."""
    try:
        job = await plane.jobs.get(webhooks.minted_for(name))
    except NotFound:
        return False
    live = job.state in (JobState.ASSIGNED, JobState.RUNNING) and bool(job.agent_id)
    return live and plane.runner_name(job) == name
