"""POST /webhooks/github with GitHub's real payloads, signed as GitHub signs them."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from tests.conftest import webhook_payload
from tests.control.conftest import Control, operator_token, queued_payload, signed


def test_queued_job_matching_a_class_is_queued(control: Control) -> None:
    r = control.deliver(queued_payload(1001, ["self-hosted", "smith-2vcpu"]))
    assert r.status_code == 202, r.text
    assert r.json()["outcome"] == "queued"
    with control.client(operator_token()) as c:
        job = c.get("/v1/jobs/1001").json()
        health = c.get("/v1/queue").json()
    assert job["state"] == "queued"
    assert job["runner_class"] == "smith-2vcpu"
    assert (job["vcpus"], job["memory_mib"]) == (2, 4096)
    assert job["repo"] == "Codertocat/Hello-World"
    assert job["run_id"] == 2202229078
    assert health["classes"]["smith-2vcpu"]["depth"] == 1


def test_plain_self_hosted_goes_to_the_cheapest_class(control: Control) -> None:
    r = control.deliver(queued_payload(1002, ["self-hosted"]))
    assert r.json()["outcome"] == "queued"
    with control.client(operator_token()) as c:
        assert c.get("/v1/jobs/1002").json()["runner_class"] == "self-hosted"


def test_unmatched_labels_are_recorded_and_ignored_with_a_reason(control: Control) -> None:
    # The fixture as GitHub sent it asks for ubuntu-latest: a hosted runner, not ours.
    payload = webhook_payload("workflow_job", "queued.payload")
    r = control.deliver(payload)
    assert r.status_code == 202
    body = r.json()
    assert body["outcome"] == "ignored"
    assert "ubuntu-latest" in body["reason"]
    with control.client(operator_token()) as c:
        assert c.get(f"/v1/jobs/{payload['workflow_job']['id']}").status_code == 404


def test_bad_missing_and_wrong_secret_signatures_are_401(control: Control) -> None:
    body = orjson.dumps(queued_payload(1003))
    url = control.url + "/webhooks/github"
    headers = signed(body)
    tampered = body.replace(b"smith-2vcpu", b"smith-8vcpu")
    assert httpx.post(url, content=tampered, headers=headers).status_code == 401
    no_sig = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    assert httpx.post(url, content=body, headers=no_sig).status_code == 401
    assert httpx.post(url, content=body, headers=signed(body, secret="other")).status_code == 401
    sha1 = {**headers, "X-Hub-Signature-256": "sha1=" + "0" * 40}
    assert httpx.post(url, content=body, headers=sha1).status_code == 401
    with control.client(operator_token()) as c:
        assert c.get("/v1/jobs/1003").status_code == 404  # nothing was recorded


def test_oversized_body_is_413_and_malformed_json_is_400(control_factory: object) -> None:
    ctl: Control = control_factory(webhook_max_body_bytes=2048)  # type: ignore[operator]
    big = orjson.dumps(queued_payload(1004))
    assert len(big) > 2048
    r = httpx.post(ctl.url + "/webhooks/github", content=big, headers=signed(big))
    assert r.status_code == 413
    bad = b'{"action": "queued", "workflow_job": '
    r = httpx.post(ctl.url + "/webhooks/github", content=bad, headers=signed(bad))
    assert r.status_code == 400
    assert "JSON" in r.json()["message"]
    arr = b"[1, 2]"
    assert httpx.post(ctl.url + "/webhooks/github", content=arr, headers=signed(arr)).status_code == 400
    # A workflow_job without an id is malformed too.
    p = {"action": "queued", "workflow_job": {"labels": ["self-hosted"]}, "repository": {"full_name": "o/r"}}
    r = ctl.deliver(p)
    assert r.status_code == 400 and "workflow_job.id" in r.json()["message"]


def test_missing_delivery_header_is_400(control: Control) -> None:
    body = orjson.dumps(queued_payload(1006))
    headers = signed(body)
    del headers["X-GitHub-Delivery"]
    assert httpx.post(control.url + "/webhooks/github", content=body, headers=headers).status_code == 400


def test_redelivery_is_accepted_and_recorded_once(control: Control) -> None:
    delivery = str(uuid.uuid4())
    payload = queued_payload(1007)
    first = control.deliver(payload, delivery=delivery)
    again = control.deliver(payload, delivery=delivery)
    assert first.status_code == again.status_code == 202
    assert first.json()["outcome"] == "queued"
    assert again.json()["outcome"] == "duplicate"
    assert again.json()["first"]["outcome"] == "queued"
    # A new delivery id for the same job (GitHub re-sending the event) does not queue it twice either.
    third = control.deliver(payload)
    assert third.json()["outcome"] == "known"
    with control.client(operator_token()) as c:
        assert c.get("/v1/queue").json()["classes"]["smith-2vcpu"]["depth"] == 1


def test_ping_is_answered(control: Control) -> None:
    r = control.deliver(webhook_payload("ping", "payload"), event="ping")
    assert r.status_code == 202
    assert r.json()["outcome"] == "pong"


def test_other_events_are_recorded_and_ignored(control: Control) -> None:
    r = control.deliver(webhook_payload("push", "payload"), event="push")
    assert r.status_code == 202
    assert r.json()["outcome"] == "ignored"
    assert "push" in r.json()["reason"]


def test_completed_while_queued_leaves_the_queue(control: Control) -> None:
    control.deliver(queued_payload(1008))
    done = webhook_payload("workflow_job", "completed.success.with-organization.payload")
    done["workflow_job"]["id"] = 1008
    done["workflow_job"]["labels"] = ["self-hosted", "smith-2vcpu"]
    r = control.deliver(done)
    assert r.status_code == 202 and r.json()["outcome"] == "dequeued"
    with control.client(operator_token()) as c:
        job = c.get("/v1/jobs/1008").json()
        assert job["state"] == "cancelled"
        assert "completed" in job["reason"]
        assert job["github_conclusion"] == "success"
        assert c.get("/v1/queue").json()["classes"]["smith-2vcpu"]["depth"] == 0
    # An agent waiting for work gets nothing: the job is gone from the queue.
    agent = control.agent("a1")
    r = agent.post("/v1/agents/lease", json={"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 0.3})
    assert r.status_code == 204


def test_in_progress_on_a_foreign_runner_dequeues(control: Control) -> None:
    control.deliver(queued_payload(1009))
    p = webhook_payload("workflow_job", "in_progress.payload")
    p["workflow_job"]["id"] = 1009
    p["workflow_job"]["labels"] = ["self-hosted", "smith-2vcpu"]
    p["workflow_job"]["runner_name"] = "some-other-runner"
    assert control.deliver(p).json()["outcome"] == "dequeued"
    with control.client(operator_token()) as c:
        assert c.get("/v1/jobs/1009").json()["state"] == "cancelled"


def test_waiting_is_recorded_without_touching_the_queue(control: Control) -> None:
    control.deliver(queued_payload(1010))
    r = control.deliver(queued_payload(1010, action="waiting"))
    assert r.json()["outcome"] == "updated"
    with control.client(operator_token()) as c:
        job = c.get("/v1/jobs/1010").json()
    assert job["state"] == "queued" and job["github_status"] == "waiting"


def test_completed_before_queued_never_enqueues(control: Control) -> None:
    done = webhook_payload("workflow_job", "completed.failure.with-organization.payload")
    done["workflow_job"]["id"] = 1011
    done["workflow_job"]["labels"] = ["self-hosted", "smith-2vcpu"]
    assert control.deliver(done).json()["outcome"] == "tombstone"
    late = control.deliver(queued_payload(1011))
    assert late.json()["outcome"] == "known"
    with control.client(operator_token()) as c:
        assert c.get("/v1/queue").json()["classes"]["smith-2vcpu"]["depth"] == 0


def test_concurrent_deliveries_each_get_their_own_answer(control: Control) -> None:
    """Through HTTP, many at once (grouped into shared writes): each redelivery is a duplicate, each job queued once."""
    calls = [(f"c-{i % 12}", 7000 + i % 12) for i in range(36)]  # every delivery three times
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda c: control.deliver(queued_payload(c[1]), delivery=c[0]), calls))
    assert all(r.status_code == 202 for r in answers)
    outcomes = Counter((d, r.json()["outcome"]) for (d, _), r in zip(calls, answers, strict=True))
    for i in range(12):
        assert outcomes[(f"c-{i}", "queued")] == 1 and outcomes[(f"c-{i}", "duplicate")] == 2
    with control.client(operator_token()) as c:
        assert c.get("/v1/queue").json()["classes"]["smith-2vcpu"]["depth"] == 12
