"""Bad input to the control plane gets a clear 400 in the documented error shape, never a 500 or FastAPI's
``detail``: signed webhooks with fields of the wrong type, NaN/inf, integers beyond 64 bits, unbounded lists."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest

from tests.control.conftest import Control, queued_payload, signed


def assert_refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "message", "retryable"} and body["retryable"] is False, body
    for word in words:
        assert word in body["message"], body


def deliver(control: Control, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()  # (orjson cannot write integers past 64 bits)
    return httpx.post(control.url + "/webhooks/github", content=body, headers=signed(body))


def with_field(path: str, value: Any) -> dict[str, Any]:
    payload = queued_payload(3001)
    *parents, key = path.split(".")
    target = payload
    for p in parents:
        target = target[p]
    target[key] = value
    return payload


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("workflow_job.run_id", "abc"),
        ("workflow_job.run_attempt", [1]),
        ("workflow_job.id", -5),
        ("workflow_job.id", 0),
        ("workflow_job.id", 2**70),
        ("workflow_job.run_id", 2**64),
        ("installation.id", "x"),
        ("installation", "x"),
        ("organization", 7),
        ("repository.owner", "x"),
        ("workflow_job.labels", ["x"] * 10_000),
    ],
)
def test_signed_webhook_with_a_bad_field_is_refused(control: Control, path: str, value: Any) -> None:
    assert_refused(deliver(control, with_field(path, value)), path.split(".")[-1])


def test_a_webhook_number_past_64_bits_in_the_raw_json_is_refused(control: Control) -> None:
    body = orjson.dumps(queued_payload(3002)).replace(b'"id":3002', b'"id":123456789012345678901234567890')
    r = httpx.post(control.url + "/webhooks/github", content=body, headers=signed(body))
    assert_refused(r, "id")


@pytest.mark.parametrize("wait", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_lease_wait_seconds_must_be_a_finite_number(control: Control, wait: str) -> None:
    a = control.agent("agent-nan")
    body = b'{"free_vcpus": 1, "free_memory_mib": 1024, "wait_seconds": %s}' % wait.encode()
    assert_refused(a.post("/v1/agents/lease", content=body, headers={"Content-Type": "application/json"}))


def test_integers_beyond_64_bits_are_refused(control: Control) -> None:
    a = control.agent("agent-big")
    assert_refused(a.post("/v1/agents/heartbeat", json={"free_vcpus": 2**70}), "free_vcpus")
    assert_refused(a.post("/v1/agents/lease", json={"free_vcpus": 2**64, "free_memory_mib": 1}), "free_vcpus")
    r = a.post("/v1/agents/jobs/1/status", json={"state": "failed", "exit_code": 2**70})
    assert_refused(r, "exit_code")


def test_unbounded_lists_are_refused_quickly(control: Control) -> None:
    """Two bounds: the agent API's body limit (413, before anything is parsed) and each list's length (400)."""
    a = control.agent("agent-lists")
    r = a.post("/v1/agents/heartbeat", json={"running": [str(i) for i in range(50_000)]})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
    r = a.post("/v1/agents/heartbeat", json={"running": [str(i) for i in range(2_000)]})  # small body, too many
    assert_refused(r, "running")
    register = {"hostname": "h", "vcpus": 1, "memory_mib": 1, "max_vms": 1}
    r = a.post("/v1/agents/register", json={**register, "labels": ["l"] * 200_000})
    assert r.status_code == 413, r.text
    assert_refused(a.post("/v1/agents/register", json={**register, "labels": ["l"] * 300}), "labels")
    assert_refused(a.post("/v1/agents/register", json={**register, "max_vms": 10**9}), "max_vms")


def test_a_bad_query_or_body_answers_in_the_error_shape(control: Control) -> None:
    from tests.control.conftest import operator_token

    with control.client(operator_token()) as c:
        assert_refused(c.post("/v1/jobs", json={"labels": ["x"]}), "run")
        assert_refused(c.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}))
        assert_refused(c.post("/v1/jobs", json={"run": "true", "labels": ["x"] * 10_000}), "labels")
        for since in ("nan", "inf", "-inf", "1e999"):
            assert_refused(c.get("/v1/jobs", params={"since": since}), "since")
