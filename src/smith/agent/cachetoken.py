"""A host's fallback cache token: for a job whose lease carries no cache access (the control plane has no
SMITH_CACHE_URL / SMITH_CACHE_SHARED_SECRET), the agent gives the guest ``SMITH_CACHE_URL`` and a token of its own:

- ``SMITH_CACHE_TOKEN_SECRET``: minted per job, scoped like the control plane's (the job's org, repository and
  branch; 6 hours), signed with this secret (the cache server's SMITH_CACHE_SHARED_SECRET);
- else ``SMITH_CACHE_TOKEN_VALUE``: this token as it is, for every job (one org's, minted with `smith cache
  token`): simpler, and every job on the host shares that token's scope.

The lease's own cache access always wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smith import tokens
from smith.domain.jobs import Job, JobState
from smith.wire.agent import JobSpec, ServiceAccess

Fallback = Callable[[JobSpec], ServiceAccess]


def fallback(settings: Any) -> Fallback | None:
    """The fallback from an agent's settings, or None when it has no cache URL or no token setting."""
    secret, value = settings.cache_token_secret, settings.cache_token_value
    url, host = settings.cache_url, settings.cache_download_host
    if not url or (secret is None and value is None):
        return None

    def access(spec: JobSpec) -> ServiceAccess:
        if secret is None:
            return ServiceAccess(url=url, token=value.get_secret_value(), download_host=host)
        job = Job(
            id=spec.id,
            state=JobState.ASSIGNED,
            runner_class=spec.runner_class,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            repo=spec.repo,
            org=spec.org,
            head_branch=spec.head_branch,
        )
        token = tokens.mint_job_cache(secret.get_secret_value(), job)
        return ServiceAccess(url=url, token=token, download_host=host)

    return access
