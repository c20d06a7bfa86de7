"""Control plane settings (``SMITH_*``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from smith.domain.jobs import RunnerClass, default_runner_classes
from smith.settings import DOWNLOAD_HOST, CommonSettings, Port


class RunnerClassSpec(BaseModel):
    vcpus: int = Field(gt=0)
    memory_mib: int = Field(gt=0)
    labels: list[str] = []
    disk_mib: int = Field(8192, gt=0)


class ControlSettings(CommonSettings):
    host: str = "127.0.0.1"
    port: Port = Field(8080, description="Port `smith control serve` listens on")
    github_webhook_secret: SecretStr | None = Field(None, description="Secret set on the GitHub webhook")
    jwt_secret: SecretStr | None = Field(None, description="Signs operator tokens (HS256)")
    agent_token_secret: SecretStr | None = Field(None, description="Signs agent tokens (HS256)")
    webhook_max_body_bytes: int = Field(25 * 1024 * 1024, gt=0, description="GitHub caps payloads at 25 MB")
    webhook_max_inflight_bytes: int = Field(
        128 * 1024 * 1024, gt=0, description="Webhook bodies being received at once, in bytes (more wait, then 503)"
    )
    webhook_wait_seconds: float = Field(10.0, gt=0, description="How long a webhook waits for room before its 503")
    webhook_body_timeout_seconds: float = Field(
        30.0, gt=0, description="A webhook body must arrive within this (408), so a slow one cannot hold its room"
    )
    webhook_rate_per_second: float = Field(
        200.0,
        ge=0,
        description="Webhook deliveries admitted per second by each replica on average (token bucket); past it "
        "429 with Retry-After, before the body is read. 0 = no limit",
    )
    webhook_burst: int = Field(1000, ge=1, description="Webhook deliveries a replica admits at once above its rate")
    agent_max_body_bytes: int = Field(
        256 * 1024, gt=0, description="Largest body of an agent API request (read only after its token is checked)"
    )
    operator_max_body_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest body of an operator API request (a submitted job's script)"
    )
    runner_classes: dict[str, RunnerClassSpec] = Field(
        default_factory=lambda: {
            rc.name: RunnerClassSpec(vcpus=rc.vcpus, memory_mib=rc.memory_mib, disk_mib=rc.disk_mib)
            for rc in default_runner_classes()
        },
        description='JSON: {"smith-2vcpu": {"vcpus": 2, "memory_mib": 4096}, ...}',
    )
    lease_ttl_seconds: float = Field(60.0, gt=0, description="A lease not renewed by heartbeat for this long expires")
    reclaim_interval_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="Leases a job may get before it fails")
    max_runner_releases: int = Field(
        5, ge=1, description="GitHub runners in a row that may exit without running a job before the job fails"
    )
    host_ttl_seconds: float = Field(30.0, gt=0, description="A host with no heartbeat for this long is dead")
    agent_forget_seconds: float = Field(
        24 * 3600.0, gt=0, description="An agent silent this long (no lease held) leaves the hosts index and queues"
    )
    job_unfinished_ttl_seconds: int = Field(
        30 * 24 * 3600, gt=0, description="A job record that never reaches a final state expires after this long"
    )
    job_retention_seconds: int = Field(7 * 24 * 3600, gt=0, description="How long finished job records stay")
    job_retention_max: int = Field(100_000, gt=0, description="At most this many job records are listed")
    delivery_retention_seconds: int = Field(3 * 24 * 3600, gt=0, description="Window for redelivery dedupe")
    lease_wait_max_seconds: float = Field(30.0, gt=0, description="Longest long-poll an agent may ask for")
    redis_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait for a Redis reply (a long-poll's blocking read waits its own time on top)"
    )
    redis_allow_eviction: bool = Field(
        False,
        description="Start even if Redis's maxmemory-policy is not noeviction (it may then evict jobs, leases, "
        "streams and dedup keys; see docs/deploy.md)",
    )
    redis_durability: Literal["local", "replicas", "aof"] = Field(
        "local",
        description="What a webhook's 202 waits for: local = the server's answer (its own persistence), replicas = "
        "WAIT for SMITH_REDIS_MIN_REPLICAS replicas, aof = WAITAOF (the server's AOF fsynced; Redis 7.2+/Valkey 8+). "
        "A wait that falls short spools the delivery to disk as well (docs/deploy.md)",
    )
    redis_min_replicas: int = Field(
        1, ge=1, description="Replicas a write waits for when SMITH_REDIS_DURABILITY=replicas"
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, description="Longest wait for replicas or the AOF before the delivery is spooled to disk as well"
    )
    spool_dir: Path | None = Field(
        None, description="Where deliveries wait while Redis is down (default <data_dir>/control/spool; '' = off)"
    )
    # GitHub App
    github_api_url: str = "https://api.github.com"
    github_app_id: str | None = None
    github_app_private_key: SecretStr | None = Field(None, description="PEM text of the App's private key")
    github_app_private_key_path: str | None = None
    github_installation_id: int | None = Field(None, description="Default installation; else from the webhook")
    github_runner_mode: Literal["jit", "registration"] = Field(
        "jit", description="jit (ephemeral JIT config) or registration (token)"
    )
    github_runner_group_id: int = Field(1, ge=1, description="Runner group JIT runners join (1 = Default)")
    github_org_runners: bool = Field(
        False, description="Register runners at the organisation instead of the job's repository"
    )
    deployment_id: str = Field(
        "",
        pattern=r"^[a-z0-9]{0,30}$",
        description="Names this deployment's GitHub runners (smith-<id>-<job>-<lease>); the runner sweep needs it",
    )
    github_runner_sweep_seconds: float = Field(
        300.0, ge=0, description="How often offline idle runners of this deployment are removed (0 = never)"
    )
    github_resolve_after_seconds: float = Field(
        300.0, gt=0, description="A job waiting that long for GitHub's webhook is looked up with the jobs API instead"
    )
    github_jit_per_minute: float = Field(
        170.0,
        ge=0,
        description="JIT configs minted per minute at most, per replica (GitHub allows ~180; 0 = no pacing)",
    )
    github_retry_max_seconds: float = Field(
        300.0, gt=0, description="Longest pause after GitHub's API failed before runner jobs are handed out again"
    )
    workflow_repos: Path | None = Field(
        None,
        description="YAML/JSON file of repositories whose workflows Smith runs itself on push/pull_request "
        "webhooks and workflow_dispatch (docs/parts/workflows.md)",
    )
    workflow_git_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Longest a git command on a workflow repository's source may take (reading a trigger's "
        "workflow files, a dispatch's ref) before it is killed and the trigger fails: a source that never answers "
        "frees its trigger worker slot then",
    )
    # Where the VM reaches the other services (handed to the agent with each job)
    cache_url: str | None = None
    cache_shared_secret: SecretStr | None = None
    cache_download_host: str | None = Field(
        None,
        pattern=DOWNLOAD_HOST,
        description="The cache's SMITH_CACHE_DOWNLOAD_HOST (one deployment-wide setting): leases name it, and "
        "Smith's guests resolve it to the cache",
    )
    logs_url: str | None = None
    logs_token_secret: SecretStr | None = Field(
        None, description="Signs the per-job log tokens (default: SMITH_AGENT_TOKEN_SECRET); the log pipeline's too"
    )
    logs_token_ttl_seconds: float = Field(
        12 * 3600.0,
        gt=0,
        description="Life of the per-job log token handed with a lease: the agent's job timeout plus time to "
        "ship what it spooled (an agent restart, a log pipeline outage)",
    )

    dev_demo_script: str | None = Field(
        None,
        description="`smith dev --demo` only: the script a GitHub job runs when it has no runner credentials (no "
        "GitHub App configured), so the bundled example shows output. Leave unset elsewhere",
    )
    # Web console (/ui)
    console_session_ttl_seconds: float = Field(
        8 * 3600.0, gt=0, description="Life of a console session cookie (never past the operator token's own expiry)"
    )
    console_cookie_secure: bool | None = Field(
        None, description="Mark the session cookie Secure (unset: when the request came over HTTPS)"
    )
    console_logs_url: str | None = Field(
        None, description="Where the control plane reads job logs for the console (default SMITH_LOGS_URL)"
    )
    console_cache_url: str | None = Field(
        None, description="Where the control plane reads cache usage for the console (default SMITH_CACHE_URL)"
    )

    @field_validator("runner_classes", mode="before")
    @classmethod
    def _parse_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @model_validator(mode="after")
    def _default_spool(self) -> ControlSettings:
        if self.spool_dir is None:
            self.spool_dir = self.data_dir / "control" / "spool"
        elif str(self.spool_dir) in ("", "."):
            self.spool_dir = None
        return self

    def classes(self) -> tuple[RunnerClass, ...]:
        return tuple(
            RunnerClass(name, spec.vcpus, spec.memory_mib, frozenset(spec.labels), spec.disk_mib)
            for name, spec in self.runner_classes.items()
        )

    def problems(self) -> list[str]:
        """What would stop the control plane from doing its job; empty when all is well."""
        found = []
        if self.github_webhook_secret is None:
            found.append("SMITH_GITHUB_WEBHOOK_SECRET is not set: every webhook will be refused (401)")
        if self.agent_token_secret is None:
            found.append("SMITH_AGENT_TOKEN_SECRET is not set: no agent can authenticate")
        if self.jwt_secret is None:
            found.append("SMITH_JWT_SECRET is not set: the operator API refuses every request")
        if self.github_app_id and not (self.github_app_private_key or self.github_app_private_key_path):
            found.append("SMITH_GITHUB_APP_ID is set but no private key (SMITH_GITHUB_APP_PRIVATE_KEY[_PATH])")
        key_path = self.github_app_private_key_path
        if key_path and not self.github_app_private_key and not os.access(Path(key_path).expanduser(), os.R_OK):
            found.append(f"SMITH_GITHUB_APP_PRIVATE_KEY_PATH={key_path}: cannot read the file")
        if not self.runner_classes:
            found.append("SMITH_RUNNER_CLASSES is empty: no job can ever match")
        return found
