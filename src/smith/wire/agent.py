"""The agent API: what a host agent and the control plane say to each other over HTTP.

All endpoints take ``Authorization: Bearer <agent token>`` (HS256 JWT, scope ``agent``, claim ``agent_id``).

=====================================  ======================  ==========================================
POST /v1/agents/register               RegisterRequest         -> RegisterResponse
POST /v1/agents/heartbeat              HeartbeatRequest        -> HeartbeatResponse
POST /v1/agents/lease                  LeaseRequest            -> 200 LeaseResponse | 204 nothing to do
POST /v1/agents/jobs/{job_id}/status   StatusReport            -> JobView (409 if the lease is not yours)
=====================================  ======================  ==========================================
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# Bounds on what an agent may say: lists no longer than one host can hold, numbers within 64 bits (Redis and
# ClickHouse take no more) and within what one machine has.
MAX_VMS = 1024  # VMs on one host, so also the jobs it runs
MAX_LABELS = 256
MAX_VCPUS = 1 << 20
MAX_MEMORY_MIB = 1 << 40
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
JobId = Annotated[str, Field(min_length=1, max_length=128)]
Label = Annotated[str, Field(max_length=256)]


class RunnerClassView(BaseModel):
    name: str
    vcpus: int
    memory_mib: int
    disk_mib: int = 8192
    labels: list[str] = []


class RegisterRequest(BaseModel):
    hostname: str = Field(min_length=1, max_length=253)
    vcpus: int = Field(gt=0, le=MAX_VCPUS)
    memory_mib: int = Field(gt=0, le=MAX_MEMORY_MIB)
    max_vms: int = Field(gt=0, le=MAX_VMS)
    labels: list[Label] = Field(
        default_factory=list, max_length=MAX_LABELS, description="Runner classes this host serves; empty = all"
    )
    backend: str = Field("", max_length=100)
    version: str = Field("", max_length=100)
    running: list[JobId] = Field(
        default_factory=list,
        max_length=MAX_VMS,
        description="Jobs this agent still runs (re-registering); the rest are released",
    )


class RegisterResponse(BaseModel):
    agent_id: str
    heartbeat_interval_seconds: float
    lease_ttl_seconds: float
    runner_classes: list[RunnerClassView]


class HeartbeatRequest(BaseModel):
    running: list[JobId] = Field(default_factory=list, max_length=MAX_VMS, description="Ids of the jobs it runs now")
    free_vcpus: Count = 0
    free_memory_mib: Count = 0
    free_vms: Count = 0


class HeartbeatResponse(BaseModel):
    jobs: dict[str, Literal["ok", "cancel", "lost"]] = Field(
        default_factory=dict, description="ok: keep going; cancel: an operator cancelled it; lost: stop, not yours"
    )


class LeaseRequest(BaseModel):
    free_vcpus: int = Field(ge=0, le=MAX_VCPUS)
    free_memory_mib: int = Field(ge=0, le=MAX_MEMORY_MIB)
    wait_seconds: float = Field(20.0, ge=0, le=60, allow_inf_nan=False, description="Long-poll: how long to wait")


class WorkflowJobSpec(BaseModel):
    """One job (one matrix combination) of a built-in workflow run: what the agent's executor needs.

    The control plane evaluated the job's ``if``, its matrix and its ``needs``; the agent parses ``workflow``
    again (the same parser) and runs job ``job`` with these contexts through the guest agent's steps mode."""

    run_id: str
    workflow: str = Field(description="The workflow file's text at the event's commit")
    file: str = Field(description="Its path in the repository, e.g. .github/workflows/ci.yml")
    job: str = Field(description="The job's id in the workflow")
    key: str = Field(description="The instance's display name (the job's name, with its matrix values)")
    matrix: dict[str, Any] = {}
    strategy: dict[str, Any] = {}
    needs: dict[str, Any] = {}
    event_name: str
    event: dict[str, Any] = {}
    repository: str
    sha: str
    ref: str
    source: str = Field(description="Where the agent clones the repository from: a local path or a git URL")
    secrets: dict[str, str] = {}
    vars: dict[str, str] = {}
    inputs: dict[str, Any] = {}
    run_number: int = 1
    run_attempt: int = Field(1, description="A re-run's attempt; github.run_id is then the first attempt's run")
    first_run_id: str = Field("", description="A re-run: the first attempt's run id (for github.run_id)")
    merge_base: str = Field("", description="A pull request run: ``sha`` is the merge of merge_head into this")
    merge_head: str = ""
    merge_time: int = Field(0, description="The merge commit's date (Unix time): it is made again identically")


class JobSpec(BaseModel):
    id: str
    runner_class: str
    vcpus: int
    memory_mib: int
    disk_mib: int = 8192
    labels: list[str] = []
    repo: str = ""
    org: str = ""
    name: str = ""
    workflow: str = ""
    head_sha: str = ""
    head_branch: str = ""
    run: str = Field("", description="Shell script to run instead of GitHub's runner (API-submitted jobs)")
    attempt: int = 1
    steps: WorkflowJobSpec | None = Field(None, description="A built-in workflow job: the agent drives its steps")


class RunnerCredential(BaseModel):
    """How the VM's GitHub runner registers: a JIT config (ephemeral) or a registration token."""

    kind: Literal["jit", "registration"]
    value: str = Field(description="encoded_jit_config, or the registration token")
    url: str = Field("", description="For registration: the repo or org URL to pass to config.sh --url")
    runner_name: str = ""
    expires_at: str | None = None


class ServiceAccess(BaseModel):
    url: str
    token: str
    download_host: str | None = Field(
        None,
        description="The cache's download URLs name this host (SMITH_CACHE_DOWNLOAD_HOST): the guest maps it to "
        "the cache (url's host) before the job starts",
    )


class LeaseResponse(BaseModel):
    job: JobSpec
    runner: RunnerCredential | None = None
    cache: ServiceAccess | None = Field(None, description="actions/cache endpoint and a per-job token")
    logs_url: str | None = Field(None, description="Where the agent ships the job's log lines")
    logs_token: str | None = Field(
        None, description="Token (scope logs) for POST /v1/logs with this job's lines only; never enters the VM"
    )
    lease_ttl_seconds: float
    traceparent: str | None = Field(None, max_length=256, description="W3C trace context of the lease (tracing on)")


class StatusReport(BaseModel):
    """``released``: GitHub's runner exited without running a job; the job goes back to its queue, the attempt
    not counted."""

    state: Literal["running", "succeeded", "failed", "cancelled", "released"]
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    reason: str = Field("", max_length=2000)
    traceparent: str | None = Field(None, max_length=256, description="W3C trace context of the agent's job span")
    conclusion: Literal["success", "failure", "cancelled", "skipped"] | None = Field(
        None, description="A built-in workflow job's result (continue-on-error applied)"
    )
    outputs: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=1 << 20)]] = Field(
        default_factory=dict, max_length=1000, description="A built-in workflow job's outputs"
    )


class JobView(BaseModel):
    """A job as the APIs show it."""

    id: str
    state: str
    runner_class: str
    vcpus: int
    memory_mib: int
    labels: list[str]
    source: str
    repo: str
    org: str
    name: str
    workflow: str
    run_id: int
    run_attempt: int
    head_sha: str
    head_branch: str
    attempts: int
    agent_id: str
    reason: str
    exit_code: int | None
    cancel_requested: bool
    github_status: str
    github_conclusion: str
    github_runner: str = ""  # the runner GitHub ran it on (maybe one minted for another job)
    created_at: float
    assigned_at: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
