"""A GitHub job's cache scope, settled at lease time from its workflow run.

The ``workflow_job`` webhook does not say whether a job runs for a pull request, nor from a fork: its head branch
alone would let a fork's pull request from a branch named ``main`` write into ``main``'s cache scope. So the
control plane asks GitHub for the job's run (``RunnerCredentials.run_origin``, cached per run id) before minting
the job's cache token; the rules are ``smith.domain.cache.run_cache_claims``. When GitHub cannot say, the job
writes into a scope of its run's own and reads what it read before.
"""

from __future__ import annotations

from typing import Any

from smith.domain.cache import RunOrigin, job_cache_claims, run_cache_claims
from smith.domain.jobs import Job
from smith.errors import SmithError
from smith.logging import get_logger
from smith.ports import RunnerCredentials

log = get_logger("smith.control")


async def lease_cache_claims(credentials: RunnerCredentials | None, job: Job) -> dict[str, Any]:
    """The claims of ``job``'s cache token. Jobs not from GitHub, or without an App to ask, keep their branch."""
    if credentials is None or job.source != "github" or not job.repo:
        return job_cache_claims(job)
    origin: RunOrigin | None = None
    try:
        origin = await credentials.run_origin(job)
    except SmithError as exc:
        log.warning(
            "could not look up the job's workflow run: its cache saves go to a scope of their own",
            run_id=job.run_id,
            error=exc.message,
        )
    return run_cache_claims(job, origin)
