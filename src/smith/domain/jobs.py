"""Jobs, their state machine, and how a job's labels pick a runner class."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# An agent id names a Redis consumer and a host: never empty (an empty consumer name widens Redis's queries to
# the whole consumer group), no spaces, separators or control characters.
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


def check_agent_id(agent_id: object) -> str:
    """``agent_id`` if it matches ``AGENT_ID_PATTERN``; else ``ValueError``."""
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise ValueError(f"agent id {agent_id!r}: 1-64 letters, digits and ._- (starting with a letter or digit)")
    return agent_id


# Which state may follow which. ASSIGNED -> QUEUED is a lease that expired and is retried.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ASSIGNED, JobState.CANCELLED, JobState.FAILED}),
    JobState.ASSIGNED: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(current: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[current]


# Labels every self-hosted Linux runner answers to, whatever its class.
GENERIC_LABELS = frozenset({"self-hosted", "linux", "x64"})


@dataclass(frozen=True)
class RunnerClass:
    """A VM shape that jobs ask for by label, e.g. ``smith-2vcpu`` -> 2 vCPU, 4096 MiB."""

    name: str
    vcpus: int
    memory_mib: int
    labels: frozenset[str] = field(default_factory=frozenset)
    disk_mib: int = 8192

    @property
    def all_labels(self) -> frozenset[str]:
        return frozenset(label.lower() for label in (*GENERIC_LABELS, self.name, *self.labels))


def match_runner_class(labels: Iterable[str], classes: Iterable[RunnerClass]) -> RunnerClass | None:
    """The cheapest class whose labels include every label the job asks for, or None.

    GitHub hands a job to a runner only when the runner has all of the job's ``runs-on`` labels, so a class
    matches when the job's labels are a subset of the class's. Among several matches the smallest (fewest
    vCPUs, then least memory, then name) wins, so ``runs-on: self-hosted`` lands on the cheapest class.
    """
    wanted = {label.lower() for label in labels if not label.lower().startswith("sticky:")}  # domain/sticky.py
    if not wanted:
        return None
    fits = [c for c in classes if wanted <= c.all_labels]
    if not fits:
        return None
    return min(fits, key=lambda c: (c.vcpus, c.memory_mib, c.name))


def default_runner_classes() -> tuple[RunnerClass, ...]:
    return (
        RunnerClass("self-hosted", vcpus=1, memory_mib=2048),
        RunnerClass("smith-2vcpu", vcpus=2, memory_mib=4096),
        RunnerClass("smith-4vcpu", vcpus=4, memory_mib=8192),
        RunnerClass("smith-8vcpu", vcpus=8, memory_mib=16384),
    )


@dataclass(frozen=True)
class Capacity:
    """What a host can still give: vCPUs, memory, VM slots."""

    vcpus: int
    memory_mib: int
    vms: int = 1_000_000

    def fits(self, rc: RunnerClass) -> bool:
        return self.vms >= 1 and rc.vcpus <= self.vcpus and rc.memory_mib <= self.memory_mib


@dataclass(frozen=True)
class Job:
    """One job as the control plane records it."""

    id: str
    state: JobState
    runner_class: str
    vcpus: int
    memory_mib: int
    labels: tuple[str, ...] = ()
    source: str = "github"  # github | api
    repo: str = ""  # owner/name
    org: str = ""
    name: str = ""
    workflow: str = ""
    run_id: int = 0
    run_attempt: int = 0
    head_sha: str = ""
    head_branch: str = ""
    default_branch: str = ""  # the repository's default branch (from the webhook)
    base_ref: str = ""  # for a pull request: the branch it merges into
    installation_id: int = 0
    run: str = ""  # a shell script to run instead of GitHub's runner (API jobs, tests)
    attempts: int = 0
    agent_id: str = ""
    reason: str = ""
    exit_code: int | None = None
    cancel_requested: bool = False
    github_status: str = ""
    github_conclusion: str = ""
    github_runner: str = ""  # the runner GitHub says ran it (in_progress/completed): maybe one minted for another job
    leases: int = 0  # leases so far, counted or not (names each lease's runner)
    releases: int = 0  # leases whose runner ran no job, in a row
    created_at: float = 0.0
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    wf_run: str = ""  # the built-in workflow run this job is one job of (control/workflows.py); "" for others
    trace: str = ""  # W3C traceparent of the job's trace (smith.tracing); empty when tracing is off
