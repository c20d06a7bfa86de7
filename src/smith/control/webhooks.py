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
    summary: Mapping[str, Any] | None = None


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def workflow_job(payload: Mapping[str, Any], classes: Iterable[RunnerClass]) -> Decision:
    """Read a ``workflow_job`` payload; raises ``InvalidInput`` when it lacks what GitHub always sends."""
    action = _require(payload, "action", str, "payload")
    wj = _require(payload, "workflow_job", dict, "payload")
    repo = _require(payload, "repository", dict, "payload")
    job_id = str(_require(wj, "id", int, "workflow_job"))
    labels = wj.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidInput("workflow_job.labels must be a list of strings")
    full_name = _require(repo, "full_name", str, "repository")
    owner = (repo.get("owner") or {}).get("login") or full_name.split("/")[0]
    org = (payload.get("organization") or {}).get("login") or ""
    installation = (payload.get("installation") or {}).get("id") or 0
    rc = match_runner_class(labels, classes)
    summary = {
        "job_id": job_id,
        "repo": full_name,
        "labels": labels,
        "run_id": wj.get("run_id"),
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
            run_id=int(wj.get("run_id") or 0),
            run_attempt=int(wj.get("run_attempt") or 0),
            head_sha=str(wj.get("head_sha") or ""),
            head_branch=str(wj.get("head_branch") or ""),
            installation_id=int(installation),
        )
        return Decision(action, job_id, rc, job, summary=summary)
    dequeue = ""
    if action == "completed":
        dequeue = f"GitHub completed the job ({conclusion or 'no conclusion'}) before an agent leased it"
    elif action == "in_progress":
        runner = str(wj.get("runner_name") or "")
        if runner and not runner.startswith(RUNNER_NAME_PREFIX):
            dequeue = f"picked up on GitHub by runner {runner!r}, not by Smith"
    return Decision(action, job_id, rc, None, conclusion=conclusion, dequeue_reason=dequeue, summary=summary)


def runner_name(job: Job) -> str:
    """The name our ephemeral runner registers with: unique per job and attempt."""
    return f"{RUNNER_NAME_PREFIX}{job.id}-{job.attempts}"
