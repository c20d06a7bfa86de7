"""The control plane's metrics (names and meanings: docs/parts/observability.md).

Counters and histograms are updated by one-line hooks (``webhooks`` wraps the webhook route, ``job_reported``
follows an agent's report, ``reclaimed`` counts the reaper's work); queue depth, oldest age, leases and hosts
are read from Redis at scrape time (``snapshot``), so every replica and worker answers the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response

from smith.domain.jobs import Job, JobState
from smith.errors import SmithError
from smith.metrics import DURATION_BUCKETS, WAIT_BUCKETS, Family

_EVENTS = frozenset({"workflow_job", "ping", "workflow_run", "check_run", "check_suite", "push", "pull_request"})

WEBHOOKS = Counter("smith_webhooks_received_total", "Signed webhook deliveries accepted, by GitHub event", ["event"])
REJECTED = Counter("smith_webhooks_rejected_total", "Webhook deliveries refused, by reason (error code)", ["reason"])
QUEUE_WAIT = Histogram(
    "smith_queue_wait_seconds",
    "From the webhook accepted (job created) to its VM running the job, by runner class",
    ["runner_class"],
    buckets=WAIT_BUCKETS,
)
STARTUP = Histogram(
    "gha_job_startup_duration_seconds",
    "From a job's lease (assigned) to its VM running it, by runner class",
    ["runner_class"],
    buckets=WAIT_BUCKETS,
)
EXECUTION = Histogram(
    "gha_job_execution_duration_seconds",
    "From a job running to its final state, by result",
    ["runner_class", "job_result"],
    buckets=DURATION_BUCKETS,
)
STARTED = Counter("gha_started_jobs_total", "Jobs whose VM started running them", ["runner_class"])
COMPLETED = Counter("gha_completed_jobs_total", "Jobs that reached a final state, by result", ["job_result"])
FINISHED = Counter(
    "smith_jobs_finished_total", "Jobs that reached a final state, by runner class and state", ["runner_class", "state"]
)
RECLAIMED = Counter(
    "smith_leases_reclaimed_total",
    "Leases taken back from agents (expired or agent restarted): requeued, or failed after the last attempt",
    ["outcome"],
)

Handler = Callable[[Request], Awaitable[Response]]


def webhooks(handler: Handler) -> Handler:
    """The webhook route, counting deliveries accepted (by event) and refused (by error code)."""

    async def counted(request: Request) -> Response:
        try:
            response = await handler(request)
        except SmithError as exc:
            REJECTED.labels(reason=exc.code).inc()
            raise
        event = request.headers.get("x-github-event", "")
        WEBHOOKS.labels(event=event if event in _EVENTS else "other").inc()
        return response

    return counted


def job_reported(job: Job) -> None:
    """After an agent's report changed ``job``: its start (queue wait) or its end (duration, result)."""
    cls = job.runner_class
    if job.state is JobState.RUNNING and job.started_at is not None:
        QUEUE_WAIT.labels(runner_class=cls).observe(max(0.0, job.started_at - job.created_at))
        if job.assigned_at is not None:
            STARTUP.labels(runner_class=cls).observe(max(0.0, job.started_at - job.assigned_at))
        STARTED.labels(runner_class=cls).inc()
    elif job.state.terminal:
        COMPLETED.labels(job_result=job.state.value).inc()
        FINISHED.labels(runner_class=cls, state=job.state.value).inc()
        if job.started_at is not None and job.finished_at is not None:
            EXECUTION.labels(runner_class=cls, job_result=job.state.value).observe(
                max(0.0, job.finished_at - job.started_at)
            )


def reclaimed(counts: Mapping[str, int]) -> None:
    for outcome in ("requeued", "failed"):
        if counts.get(outcome):
            RECLAIMED.labels(outcome=outcome).inc(counts[outcome])
            if outcome == "failed":
                COMPLETED.labels(job_result="failed").inc(counts[outcome])


def families(health: Mapping[str, Any] | None) -> Iterable[Family]:
    """Scrape-time gauges from ``ControlPlane.queue_health()`` (None: Redis did not answer)."""
    yield Family("smith_redis_up", "Whether Redis answered this scrape", (), {(): 0.0 if health is None else 1.0})
    if health is None:
        return
    classes: Mapping[str, Mapping[str, Any]] = health["classes"]
    per_class = (
        ("smith_queue_depth", "Jobs queued and not yet leased", "depth"),
        ("smith_queue_oldest_age_seconds", "Age of the oldest queued job", "oldest_queued_age_seconds"),
        ("gha_assigned_jobs", "Jobs leased to an agent (assigned or running)", "leases_in_flight"),
    )
    for name, doc, key in per_class:
        yield Family(name, doc, ("runner_class",), {(c,): float(v[key] or 0.0) for c, v in classes.items()})
    hosts = health.get("hosts") or []
    yield Family("smith_hosts_alive", "Agents that heartbeat within the host TTL", (), {(): float(len(hosts))})
    running = sum(len(h.get("running") or []) for h in hosts if isinstance(h, Mapping))
    yield Family("gha_running_jobs", "Jobs running on agents (as their last heartbeats say)", (), {(): float(running)})
