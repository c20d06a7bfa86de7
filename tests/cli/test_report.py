"""`smith report`: the real command (a subprocess) against a real control plane with two agents, a real cache
server and a real log pipeline (chdb), and the pure sums behind it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from smith import tokens
from smith.adapters.chdb import ChdbClickHouse
from smith.adapters.redis.embedded import free_port
from smith.cache.app import create_app as cache_app
from smith.cache.settings import CacheSettings
from smith.cli import reportdata
from smith.logs.app import create_app as logs_app
from smith.logs.settings import LogsSettings
from smith.testing.fleet import OPERATOR_SECRET, Fleet, fleet
from smith.testing.servers import ThreadedServer
from tests.cache.conftest import SECRET as CACHE_SECRET
from tests.cache.test_protocol import restore_v2, save_v2
from tests.cli.conftest import Result, run_smith
from tests.control.conftest import queued_payload

LOGS_AGENT_SECRET = "report-logs-agent-secret-0123456789"


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [reportdata.percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert reportdata.percentile([], 50) is None and reportdata.percentile([7.0], 99) == 7.0


def test_jobs_report_sums() -> None:
    jobs = [
        {
            "state": "succeeded",
            "runner_class": "a",
            "created_at": 100,
            "started_at": 102,
            "finished_at": 112,
            "agent_id": "h1",
        },
        {
            "state": "failed",
            "runner_class": "b",
            "created_at": 100,
            "started_at": 104,
            "finished_at": 105,
            "reason": "boom",
            "agent_id": "h2",
        },
        {"state": "queued", "runner_class": "a", "created_at": 101, "started_at": None, "finished_at": None},
    ]
    r = reportdata.jobs_report(jobs)
    assert r["by_state"] == {"succeeded": 1, "failed": 1, "queued": 1}
    assert r["queue_wait_seconds"]["count"] == 2 and r["queue_wait_seconds"]["p50"] == 2.0
    assert r["by_class"]["a"]["jobs"] == 2 and r["by_class"]["b"]["duration_seconds"]["p99"] == 1.0
    assert r["top_failure_reasons"] == [{"reason": "boom", "jobs": 1}]
    assert r["hosts"] == {"h1": {"jobs": 1, "succeeded": 1}, "h2": {"jobs": 1, "failed": 1}}


async def _finished(f: Fleet, n: int) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {f.operator_token()}"}
    async with httpx.AsyncClient(base_url=f.url, headers=auth) as c:
        deadline = time.monotonic() + 60
        while True:
            jobs = (await c.get("/v1/jobs", params={"limit": 100})).json()
            if len(jobs) >= n and all(j["state"] in ("succeeded", "failed") for j in jobs):
                return list(jobs)
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.1)


@pytest.fixture
async def ran(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Fleet, list[dict[str, Any]]]]:
    """Four webhook jobs that succeed and two script jobs that fail (exit 3), run on two agents."""
    async with fleet(redis_url, tmp_path / "fleet", agents=2) as f:
        async with httpx.AsyncClient(base_url=f.url) as c:
            for i in range(4):
                body = orjson.dumps(queued_payload(9300 + i))
                r = await c.post("/webhooks/github", content=body, headers=f.signed_headers(body, f"rep-{i}"))
                assert r.status_code == 202
            auth = {"Authorization": f"Bearer {f.operator_token()}"}
            for _ in range(2):
                r = await c.post("/v1/jobs", json={"run": "exit 3", "labels": ["smith-2vcpu"]}, headers=auth)
                assert r.status_code == 201
        yield f, await _finished(f, 6)


async def smith(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(run_smith, *args, env=env)


async def test_report_jobs_json_table_and_plots(ran: tuple[Fleet, list[dict[str, Any]]], tmp_path: Path) -> None:
    f, records = ran
    token = f.operator_token()
    out = await smith("report", "jobs", "--base-url", f.url, "--token", token, "--limit", "100", "--json")
    assert out.code == 0, out.err
    r = json.loads(out.out)
    assert r["jobs"] == 6 and r["by_state"] == {"succeeded": 4, "failed": 2}
    assert r["top_failure_reasons"] == [{"reason": "exit code 3", "jobs": 2}]
    assert sum(h["jobs"] for h in r["hosts"].values()) == 6 and set(r["hosts"]) <= {"fleet-0", "fleet-1"}
    waits = sorted(j["started_at"] - j["created_at"] for j in records)
    assert r["queue_wait_seconds"]["count"] == 6 and r["queue_wait_seconds"]["p50"] == pytest.approx(waits[2])
    assert r["queue"]["queued_total"] == 0 and r["queue"]["hosts_alive"] == 2
    table = await smith("report", "jobs", "--base-url", f.url, "--token", token, "--plot", str(tmp_path / "q.png"))
    assert table.code == 0, table.err
    assert "wait p50" in table.out and "exit code 3" in table.out and "fleet-" in table.out
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = await smith(
        "report", "jobs", "--base-url", f.url, "--token", token, "--json", "--plot", str(tmp_path / "q.svg")
    )
    assert svg.code == 0 and "<svg" in (tmp_path / "q.svg").read_text()
    one = await smith("report", "jobs", "--base-url", f.url, "--token", token, "--job-id", records[0]["id"], "--json")
    assert json.loads(one.out)["jobs"] == 1
    bad = await smith("report", "jobs", "--base-url", f.url, "--token", token, "--plot", str(tmp_path / "q.gif"))
    assert bad.code == 1 and "use a .png or .svg" in bad.err


@pytest.fixture
def cache_srv(redis_url: str, tmp_path: Path) -> Any:
    settings = CacheSettings(
        redis_url=redis_url,
        cache_shared_secret=CACHE_SECRET,
        cache_storage_path=tmp_path / "blobs",
        data_dir=tmp_path / "cache-data",
    )
    with ThreadedServer(cache_app(settings, janitor=False)) as srv:
        yield srv


@pytest.fixture
def logs_srv(chdb_dir: Path) -> Any:
    """The log pipeline on chdb (the session's one directory: chdb opens one per process), its own database."""
    settings = LogsSettings(
        agent_token_secret=LOGS_AGENT_SECRET,
        jwt_secret=OPERATOR_SECRET,
        clickhouse_database=f"report_{uuid.uuid4().hex[:8]}",
        logs_batch_delay_seconds=0.02,
    )
    with ThreadedServer(logs_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        yield srv


def test_report_cache_hit_rate_and_top_orgs(cache_srv: Any) -> None:
    org_token = tokens.mint(CACHE_SECRET, scope="cache", subject="rep-org", ttl_seconds=600, org="rep-org", repo="r")
    with httpx.Client(base_url=cache_srv.url, headers={"Authorization": f"Bearer {org_token}"}) as c:
        assert restore_v2(c, "none") is None
        save_v2(c, "k", b"y" * 2048)
        assert restore_v2(c, "k") is not None
    out = run_smith(
        "report", "cache", "--cache-url", cache_srv.url, "--json", env={"SMITH_CACHE_SHARED_SECRET": CACHE_SECRET}
    )
    assert out.code == 0, out.err
    r = json.loads(out.out)
    top = next(o for o in r["top_orgs"] if o["org"] == "rep-org")
    assert top["bytes"] == 2048 and top["hit_rate"] == 0.5
    table = run_smith("report", "cache", "--cache-url", cache_srv.url, env={"SMITH_CACHE_SHARED_SECRET": CACHE_SECRET})
    assert "rep-org" in table.out and "hit rate" in table.out
    none = run_smith("report", "cache", "--cache-url", cache_srv.url)
    assert none.code == 1 and "SMITH_CACHE_SHARED_SECRET" in none.err


def test_report_logs_volume_and_one_job(logs_srv: Any) -> None:
    writer = tokens.mint_logs(LOGS_AGENT_SECRET, job_id="rep-job", agent_id="h", ttl_seconds=600)
    lines = b"\n".join(
        orjson.dumps({"job_id": "rep-job", "seq": s, "ts": time.time(), "line": f"l{s}"}) for s in range(1, 6)
    )
    r = httpx.post(logs_srv.url + "/v1/logs", content=lines, headers={"Authorization": f"Bearer {writer}"})
    assert r.status_code == 200, r.text
    op = tokens.mint(OPERATOR_SECRET, scope="operator", subject="t", ttl_seconds=600)
    out = run_smith("report", "logs", "--logs-url", logs_srv.url, "--token", op, "--json")
    assert out.code == 0, out.err
    got = json.loads(out.out)
    assert got["jobs"][0]["job_id"] == "rep-job" and got["jobs"][0]["lines"] == 5 and got["pipeline"]["written"] >= 5
    one = run_smith("report", "logs", "--logs-url", logs_srv.url, "--token", op, "--job-id", "rep-job", "--json")
    assert json.loads(one.out)["job"]["lines"] == 5


async def test_overview_notes_a_service_that_does_not_answer(
    ran: tuple[Fleet, list[dict[str, Any]]], cache_srv: Any
) -> None:
    f, _ = ran
    dead = f"http://127.0.0.1:{free_port()}"
    args = ("report", "overview", "--base-url", f.url, "--token", f.operator_token(), "--cache-url", cache_srv.url)
    env = {"SMITH_CACHE_SHARED_SECRET": CACHE_SECRET}
    out = await smith(*args, "--logs-url", dead, "--json", env=env)
    assert out.code == 0, out.err
    r = json.loads(out.out)
    assert r["jobs"]["jobs"] == 6 and "hit_rate" in r["cache"] and "cannot reach" in r["logs"]["unavailable"]
    table = await smith(*args, "--logs-url", dead, env=env)
    assert "logs: unavailable" in table.out and "wait p50" in table.out
