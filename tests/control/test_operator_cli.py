"""The operator API and the `smith jobs|auth|config` commands against a running control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from smith import tokens
from smith.cli import app
from tests.control.conftest import AGENT_SECRET, OPERATOR_SECRET, Control, operator_token, queued_payload

runner = CliRunner()


def smith(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = runner.invoke(app, list(args), env=env or {}, catch_exceptions=False)
    return res.exit_code, res.output


def test_health_endpoints(control: Control) -> None:
    assert httpx.get(control.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(control.url + "/readyz").json()["redis"] == "ok"


def test_operator_api_needs_an_operator_token(control: Control) -> None:
    assert httpx.get(control.url + "/v1/jobs").status_code == 401
    wrong = tokens.mint("some-other-secret-0123456789abcdef0123", scope="operator", subject="x", ttl_seconds=60)
    assert httpx.get(control.url + "/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    cache_scoped = tokens.mint(OPERATOR_SECRET, scope="cache", subject="x", ttl_seconds=60)
    r = httpx.get(control.url + "/v1/jobs", headers={"Authorization": f"Bearer {cache_scoped}"})
    assert r.status_code == 403


def test_recent_filters_and_order(control: Control) -> None:
    control.deliver(queued_payload(4001, ["self-hosted", "smith-2vcpu"]))
    control.deliver(queued_payload(4002, ["self-hosted", "smith-4vcpu"]))
    control.deliver(queued_payload(4003, ["self-hosted", "smith-2vcpu"]))
    with control.client(operator_token()) as c:
        ids = [j["id"] for j in c.get("/v1/jobs").json()]
        assert ids[:3] == ["4003", "4002", "4001"]
        only4 = c.get("/v1/jobs", params={"runner_class": "smith-4vcpu"}).json()
        assert [j["id"] for j in only4] == ["4002"]
        assert c.get("/v1/jobs", params={"repo": "nobody/nothing"}).json() == []
        assert len(c.get("/v1/jobs", params={"limit": 2}).json()) == 2
        assert c.get("/v1/jobs", params={"limit": 0}).status_code == 400  # the error shape, not FastAPI's 422
        assert c.get("/v1/jobs/unknown").status_code == 404


def test_submit_a_script_job(control: Control) -> None:
    with control.client(operator_token()) as c:
        r = c.post("/v1/jobs", json={"run": "echo hi", "labels": ["smith-2vcpu"]})
        assert r.status_code == 201
        job = r.json()
        assert job["source"] == "api" and job["runner_class"] == "smith-2vcpu"
        assert c.post("/v1/jobs", json={"run": "echo", "labels": ["gpu-a100"]}).status_code == 400
    a = control.agent("a")
    got = a.post("/v1/agents/lease", json={"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 1}).json()
    assert got["job"]["id"] == job["id"] and got["job"]["run"] == "echo hi"
    assert got["runner"] is None  # no GitHub runner for a script job


def test_queue_health_reports_depth_age_leases_and_hosts(control: Control) -> None:
    control.deliver(queued_payload(4010))
    control.deliver(queued_payload(4011))
    a = control.agent("host-1")
    a.post("/v1/agents/lease", json={"free_vcpus": 8, "free_memory_mib": 32768, "wait_seconds": 1})
    with control.client(operator_token()) as c:
        h = c.get("/v1/queue").json()
    cls = h["classes"]["smith-2vcpu"]
    assert cls["depth"] == 1 and cls["leases_in_flight"] == 1
    assert cls["oldest_queued_age_seconds"] is not None and cls["oldest_queued_age_seconds"] >= 0
    assert h["hosts_alive"] == 1 and h["hosts"][0]["agent_id"] == "host-1"
    assert h["hosts"][0]["vcpus"] == 8


def test_jobs_cli(control: Control) -> None:
    control.deliver(queued_payload(4020))
    env = {"SMITH_CONTROL_URL": control.url, "SMITH_OPERATOR_TOKEN": operator_token()}
    code, out = smith("jobs", "recent", "--json", env=env)
    assert code == 0 and json.loads(out)[0]["id"] == "4020"
    code, out = smith("jobs", "show", "4020", "--json", env=env)
    assert code == 0 and json.loads(out)["state"] == "queued"
    code, out = smith("jobs", "status", "--json", env=env)
    assert code == 0 and json.loads(out)["classes"]["smith-2vcpu"]["depth"] == 1
    code, out = smith("jobs", "recent", env=env)
    assert code == 0 and "4020" in out
    code, out = smith("jobs", "cancel", "4020", "--json", env=env)
    assert code == 0 and json.loads(out)["outcome"] == "cancelled"
    code, out = smith("jobs", "show", "999999", env=env)
    assert code == 1 and "404" in out
    code, out = smith("jobs", "recent", env={"SMITH_CONTROL_URL": control.url})
    assert code == 1 and "token" in out


def test_auth_cli_mints_tokens_the_server_accepts(control: Control) -> None:
    code, out = smith(
        "auth",
        "agent-token",
        "--agent-id",
        "host-9",
        "--ttl",
        "1h",
        "--json",
        env={"SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET},
    )
    assert code == 0
    minted = json.loads(out)
    assert minted["expires_in"] == 3600
    claims = tokens.verify(AGENT_SECRET, minted["token"], scope="agent")
    assert claims["agent_id"] == "host-9"
    r = httpx.post(
        control.url + "/v1/agents/register",
        headers={"Authorization": f"Bearer {minted['token']}"},
        json={"hostname": "h", "vcpus": 2, "memory_mib": 1024, "max_vms": 1},
    )
    assert r.status_code == 200 and r.json()["agent_id"] == "host-9"
    code, out = smith("auth", "agent-token", "--agent-id", "x", env={})
    assert code == 1 and "SMITH_AGENT_TOKEN_SECRET" in out
    code, out = smith(
        "auth", "agent-token", "--agent-id", "x", "--ttl", "soon", env={"SMITH_AGENT_TOKEN_SECRET": AGENT_SECRET}
    )
    assert code == 1 and "duration" in out


def test_config_check() -> None:
    code, out = smith("config", "check", "control", "--json", env={"SMITH_LEASE_TTL_SECONDS": "-1"})
    assert code == 1
    body = json.loads(out)
    assert body["valid"] is False and body["errors"][0]["setting"] == "SMITH_LEASE_TTL_SECONDS"
    env = {
        "SMITH_GITHUB_WEBHOOK_SECRET": "s3cret-value",
        "SMITH_RUNNER_CLASSES": '{"big": {"vcpus": 16, "memory_mib": 65536}}',
    }
    code, out = smith("config", "check", "control", "--json", env=env)
    assert code == 0
    body = json.loads(out)
    assert body["valid"] is True
    assert body["settings"]["github_webhook_secret"] == "***"  # never printed
    assert "s3cret-value" not in out
    assert list(body["settings"]["runner_classes"]) == ["big"]
    assert any("SMITH_AGENT_TOKEN_SECRET" in w for w in body["warnings"])
    code, _ = smith("config", "check", "control", "--strict", env=env)
    assert code == 2
    code, out = smith("config", "check", "nonsense", env={})
    assert code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["jobs", "--help"],
        ["control", "serve", "--help"],
        ["dev", "--help"],
        ["auth", "--help"],
        ["config", "check", "--help"],
    ],
)
def test_every_command_explains_itself(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "smith", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        check=True,
    ).stdout
    assert "Usage" in out and len(out.splitlines()) > 5


def test_unknown_job_id_is_one_line_and_non_zero(control: Control) -> None:
    from tests.cli.conftest import assert_one_line_error, run_smith

    env = {"SMITH_CONTROL_URL": control.url, "SMITH_OPERATOR_TOKEN": operator_token()}
    result = run_smith("jobs", "show", "no-such-job", env=env)
    assert_one_line_error(result, "404", "no-such-job")
    assert result.code == 1


def test_job_ids_are_whole_in_a_table_printed_to_a_pipe(control: Control) -> None:
    from tests.cli.conftest import run_smith

    job_id = 9_123_456_789_012_345_678  # GitHub's ids are 64-bit
    payload = queued_payload(job_id)
    payload["repository"]["full_name"] = "an-organisation-with-a-long-name/and-a-repository-with-a-long-name-too"
    assert control.deliver(payload).status_code == 202
    env = {"SMITH_CONTROL_URL": control.url, "SMITH_OPERATOR_TOKEN": operator_token()}
    result = run_smith("jobs", "recent", env=env)  # stdout is a pipe here, as in `smith jobs recent | cat`
    assert result.code == 0, result.err
    assert str(job_id) in result.out
    assert payload["repository"]["full_name"] in result.out
