"""The control plane's /metrics, read back as Prometheus reads it, after one job run over the real API."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.control.conftest import Control, operator_token, queued_payload, signed
from tests.control.test_queue import lease, report
from tests.scrape import scrape, value

CLS = "smith-2vcpu"


def test_one_job_run_shows_in_metrics(control: Control) -> None:
    before = scrape(control.url)
    assert control.deliver(queued_payload(7101)).status_code == 202
    bad = httpx.post(control.url + "/webhooks/github", content=b"{}", headers=signed(b"{}", secret="not-the-secret"))
    assert bad.status_code == 401
    queued = scrape(control.url)
    assert value(queued, "smith_queue_depth", runner_class=CLS) == 1
    assert value(queued, "smith_queue_oldest_age_seconds", runner_class=CLS) >= 0
    assert value(queued, "smith_redis_up") == 1
    a = control.agent("metrics-agent")
    assert lease(a) is not None
    leased = scrape(control.url)
    assert value(leased, "smith_queue_depth", runner_class=CLS) == 0
    assert value(leased, "gha_assigned_jobs", runner_class=CLS) == 1
    assert report(a, "7101", "running").status_code == 200
    assert report(a, "7101", "succeeded", exit_code=0).status_code == 200
    after = scrape(control.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("smith_webhooks_received_total", event="workflow_job") == 1
    assert grew("smith_webhooks_rejected_total", reason="unauthorized") == 1
    assert grew("smith_queue_wait_seconds_count", runner_class=CLS) == 1
    assert grew("gha_job_startup_duration_seconds_count", runner_class=CLS) == 1
    assert grew("gha_started_jobs_total", runner_class=CLS) == 1
    assert grew("gha_completed_jobs_total", job_result="succeeded") == 1
    assert grew("smith_jobs_finished_total", runner_class=CLS, state="succeeded") == 1
    assert grew("gha_job_execution_duration_seconds_count", runner_class=CLS, job_result="succeeded") == 1
    # The histogram's sum is the job record's own wait: created -> started.
    with control.client(operator_token()) as c:
        rec = c.get("/v1/jobs/7101").json()
    waited = grew("smith_queue_wait_seconds_sum", runner_class=CLS)
    assert abs(waited - (rec["started_at"] - rec["created_at"])) < 1e-3
    assert value(after, "gha_assigned_jobs", runner_class=CLS) == 0


def test_reclaimed_leases_are_counted(control: Control) -> None:
    before = scrape(control.url)
    control.deliver(queued_payload(7102))
    a = control.agent("metrics-restarting")
    assert lease(a) is not None
    control.agent("metrics-restarting")  # registers again holding nothing: its lease goes back
    after = scrape(control.url)
    assert (
        value(after, "smith_leases_reclaimed_total", outcome="requeued")
        - value(before, "smith_leases_reclaimed_total", outcome="requeued")
        == 1
    )


def test_metrics_token_is_required_when_set(control_factory: Callable[..., Control]) -> None:
    control = control_factory(metrics_token="scrape-token-0123456789")
    r = httpx.get(control.url + "/metrics")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert httpx.get(control.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "smith_queue_depth" in str(scrape(control.url, "scrape-token-0123456789"))


def test_metrics_answer_while_redis_is_down(control_factory: Callable[..., Control]) -> None:
    from smith.adapters.redis.embedded import free_port

    control = control_factory(redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout_seconds=0.5)
    got = scrape(control.url)
    assert value(got, "smith_redis_up") == 0 and ("smith_queue_depth", frozenset()) not in got
