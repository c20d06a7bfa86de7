"""Turn a verified GitHub delivery into what the job store records. Pure functions over the payload."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smith.domain.jobs import Job, JobState, RunnerClass, match_runner_class
from smith.errors import InvalidInput

WORKFLOW_JOB_ACTIONS = ("queued", "in_progress", "completed", "waiting")
RUNNER_NAME_PREFIX = "smith-"


@dataclass(frozen=True)
class Decision:
    """What to do with a ``workflow_job`` delivery."""

    action: str
    job_id: str
    runner_class: RunnerClass | None
    job: Job | None  # set for a 'queued' job that Smith will run
    reason: str = ""  # why it is ignored, when it is
    conclusion: str = ""
    dequeue_reason: str = ""
    runner_name: str = ""  # in_progress/completed: the runner GitHub gave the job to
    summary: Mapping[str, Any] | None = None


MAX_ID = 2**63 - 1  # GitHub's ids are 64-bit
MAX_LABELS = 256


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} is missing or not a {getattr(kind, '__name__', kind)}")
    if isinstance(value, int) and not 0 < value <= MAX_ID:
        raise InvalidInput(f"{where}.{key} must be a positive 64-bit integer")
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` if present and not null (checked as ``_require`` does), else None."""
    return None if obj.get(key) is None else _require(obj, key, kind, where)


def _optional_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None or value == 0:
        return 0
    return int(_require(obj, key, int, where))


def workflow_job(payload: Mapping[str, Any], classes: Iterable[RunnerClass], deployment: str = "") -> Decision:
    """Read a ``workflow_job`` payload; raises ``InvalidInput`` when it lacks what GitHub always sends."""
    action = _require(payload, "action", str, "payload")
    wj = _require(payload, "workflow_job", dict, "payload")
    repo = _require(payload, "repository", dict, "payload")
    job_id = str(_require(wj, "id", int, "workflow_job"))
    labels = wj.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) and len(x) <= 256 for x in labels):
        raise InvalidInput("workflow_job.labels must be a list of strings")
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"workflow_job.labels: more than {MAX_LABELS}")
    full_name = _require(repo, "full_name", str, "repository")
    owner = _optional(_optional(repo, "owner", dict, "repository") or {}, "login", str, "repository.owner")
    owner = owner or full_name.split("/")[0]
    org = _optional(_optional(payload, "organization", dict, "payload") or {}, "login", str, "organization") or ""
    installation = _optional_int(_optional(payload, "installation", dict, "payload") or {}, "id", "installation")
    run_id = _optional_int(wj, "run_id", "workflow_job")
    run_attempt = _optional_int(wj, "run_attempt", "workflow_job")
    rc = match_runner_class(labels, classes)
    summary = {
        "job_id": job_id,
        "repo": full_name,
        "labels": labels,
        "run_id": run_id or None,
        "name": wj.get("name"),
    }
    if action not in WORKFLOW_JOB_ACTIONS:
        return Decision(action, job_id, rc, None, reason=f"workflow_job action {action!r} is not handled")
    conclusion = str(wj.get("conclusion") or "")
    if action == "queued":
        if rc is None:
            return Decision(
                action, job_id, None, None, reason=f"no runner class matches labels {labels}", summary=summary
            )
        job = Job(
            id=job_id,
            state=JobState.QUEUED,
            runner_class=rc.name,
            vcpus=rc.vcpus,
            memory_mib=rc.memory_mib,
            labels=tuple(labels),
            source="github",
            repo=full_name,
            org=org or owner,
            name=str(wj.get("name") or ""),
            workflow=str(wj.get("workflow_name") or ""),
            run_id=run_id,
            run_attempt=run_attempt,
            head_sha=str(wj.get("head_sha") or ""),
            head_branch=str(wj.get("head_branch") or ""),
            default_branch=_optional(repo, "default_branch", str, "repository") or "",
            installation_id=installation,
        )
        return Decision(action, job_id, rc, job, summary=summary)
    dequeue = ""
    runner = str(wj.get("runner_name") or "") if action in ("in_progress", "completed") else ""
    if action == "completed" and not owned(runner, deployment):
        dequeue = f"GitHub completed the job ({conclusion or 'no conclusion'}) before an agent leased it"
    elif action == "in_progress" and runner and not owned(runner, deployment):
        dequeue = f"picked up on GitHub by runner {runner!r}, not by Smith"
    return Decision(
        action,
        job_id,
        rc,
        None,
        conclusion=conclusion,
        dequeue_reason=dequeue,
        runner_name=runner[:256],
        summary=summary,
    )


def owned(name: str, deployment: str = "") -> bool:
    """A runner of THIS deployment: ``smith-<deployment>-<job>-<lease>`` (``smith-<job>-<lease>`` without a
    deployment id). Another deployment's runners (on the same organisation) are never taken for ours."""
    if not minted_for(name):
        return False
    if deployment:
        return name.startswith(f"{RUNNER_NAME_PREFIX}{deployment}-") and name.count("-") == 3
    return name.count("-") == 2


def minted_for(name: str) -> str:
    """The job a Smith runner was minted for (its name ends ``-<job id>-<lease>``), or ''."""
    if not name.startswith(RUNNER_NAME_PREFIX):
        return ""
    parts = name.rsplit("-", 2)
    return parts[-2] if len(parts) == 3 and parts[-2].isdigit() and parts[-1].isdigit() else ""


def runner_name(job: Job, deployment: str = "") -> str:
    """The name a lease's ephemeral runner registers with: unique per job and lease. GitHub may give that runner
    another job with the same labels; the webhooks name it, and that is how Smith learns which job ran where."""
    middle = f"{deployment}-" if deployment else ""
    return f"{RUNNER_NAME_PREFIX}{middle}{job.id}-{job.leases or job.attempts}"
