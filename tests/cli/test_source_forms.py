"""The command forms our source design documents, each run as written (`python -m smith.cli.<module> ...`, a real
subprocess) against real servers: one test per line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson

from smith import tokens
from tests.cli.conftest import Result
from tests.cli.test_report import LOGS_AGENT_SECRET, logs_srv  # noqa: F401  (fixture)
from tests.control.conftest import Control, control, control_factory, operator_token, queued_payload  # noqa: F401

SECRET = "source-form-secret-0123456789abcdef"
HINT = "hint: --secret is visible to other users"


def module(name: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """`python -m smith.cli.<name> ARGS` with no SMITH_* settings but ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    base["SMITH_DATA_DIR"] = os.environ["SMITH_DATA_DIR"]
    proc = subprocess.run(
        [sys.executable, "-m", f"smith.cli.{name}", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def clean(r: Result) -> None:
    assert r.code == 0, r.err
    assert "Warning" not in r.err and "Traceback" not in r.err, r.err


def test_jobs_recent(control: Control) -> None:  # noqa: F811
    assert control.deliver(queued_payload(12001)).status_code == 202
    r = module("jobs", "recent", "--base-url", control.url, "--token", operator_token(), "--limit", "10")
    clean(r)
    assert "12001" in r.out and "queued" in r.out
    assert r.err.startswith("hint: --token is visible") and "SMITH_OPERATOR_TOKEN" in r.err


def test_jobs_status(control: Control) -> None:  # noqa: F811
    control.deliver(queued_payload(12002))
    r = module("jobs", "status", "--base-url", control.url, "--token", operator_token())
    clean(r)
    assert "smith-2vcpu" in r.out and "hosts alive" in r.out


def test_logs_of_a_job(logs_srv: Any) -> None:  # noqa: F811
    writer = tokens.mint_logs(LOGS_AGENT_SECRET, job_id="12345", agent_id="h", ttl_seconds=600)
    body = b"\n".join(
        orjson.dumps({"job_id": "12345", "seq": s, "ts": time.time(), "line": f"step {s}"}) for s in range(1, 81)
    )
    assert httpx.post(logs_srv.url + "/v1/logs", content=body, headers={"Authorization": f"Bearer {writer}"}).is_success
    op = tokens.mint(_operator_secret(), scope="operator", subject="t", ttl_seconds=600)
    r = module("logs", "--logs-url", logs_srv.url, "--job-id", "12345", "--limit", "50", "--token", op)
    clean(r)
    assert "step 1\n" in r.out and "step 50\n" in r.out and "step 51" not in r.out and "--after 50" in r.out


def _operator_secret() -> str:
    from smith.testing.fleet import OPERATOR_SECRET

    return OPERATOR_SECRET


def test_cache_token() -> None:
    r = module("cache", "--secret", SECRET, "--org-id", "123", "--ttl", "3600")
    assert r.code == 0, r.err
    claims = tokens.verify(SECRET, r.out.strip(), scope="cache")
    assert claims["org"] == "123" and claims["exp"] - claims["iat"] == 3600
    assert r.err.startswith(HINT) and "SMITH_CACHE_SHARED_SECRET" in r.err and len(r.err.splitlines()) == 1
    quiet = module("cache", "--org-id", "123", "--ttl", "3600", env={"SMITH_CACHE_SHARED_SECRET": SECRET})
    assert quiet.code == 0 and quiet.err == ""  # from the environment: no hint


def test_auth_agent_token() -> None:
    r = module("auth", "--agent-id", "agent-001", "--secret", SECRET, "--ttl", "3600")
    assert r.code == 0, r.err
    claims = tokens.verify(SECRET, r.out.strip(), scope="agent")
    assert claims["agent_id"] == "agent-001" and claims["exp"] - claims["iat"] == 3600
    assert r.err.startswith(HINT) and "SMITH_AGENT_TOKEN_SECRET" in r.err
    quiet = module("auth", "--agent-id", "agent-001", "--ttl", "3600", env={"SMITH_AGENT_TOKEN_SECRET": SECRET})
    assert quiet.code == 0 and quiet.err == "" and tokens.verify(SECRET, quiet.out.strip(), scope="agent")
    bad = module("auth", "--agent-id", "bad id", "--secret", SECRET)
    assert bad.code == 1 and "smith: error:" in bad.err


def test_report_forms(control: Control) -> None:  # noqa: F811
    control.deliver(queued_payload(12003))
    args = ("--base-url", control.url, "--token", operator_token())
    jobs = module("report", "jobs", *args, "--limit", "10")
    clean(jobs)
    assert "wait p50" in jobs.out
    over = module("report", "overview", *args, "--logs-url", "http://127.0.0.1:9", "--limit", "10")
    clean(over)
    assert "logs: unavailable" in over.out and "cache: unavailable" in over.out
    for section in ("cache", "logs"):
        r = module("report", section, "--help")
        assert r.code == 0 and "--json" in r.out
