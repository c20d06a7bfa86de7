"""`smith logs` against a running pipeline: pages, tails, follow, search, summary, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from smith.adapters.chdb import ChdbClickHouse
from smith.cli import app
from smith.logs.app import create_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer
from tests.logs.conftest import operator_token
from tests.logs.test_app import ndjson, writer


@pytest.fixture
def env(settings: LogsSettings, chdb_dir: Path) -> Iterator[dict[str, str]]:
    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        with httpx.Client(base_url=srv.url) as c:
            c.post("/v1/logs", content=ndjson("cli-1", range(1, 21), repo="acme/api"), headers=writer("cli-1"))
            c.post(
                "/v1/logs",
                content=ndjson("cli-1", range(21, 22), stream="stderr", line="ERROR boom"),
                headers=writer("cli-1"),
            )
            c.post(
                "/v1/logs", content=ndjson("cli-1", range(22, 23), stream="system", last=True), headers=writer("cli-1")
            )
        yield {"SMITH_LOGS_URL": srv.url, "SMITH_OPERATOR_TOKEN": operator_token()}


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["logs", *args], env=env)
    return result.exit_code, result.output


def test_page_tail_and_text(env: dict[str, str]) -> None:
    code, out = run(env, "--job-id", "cli-1", "--limit", "5", "--json")
    assert code == 0 and [x["seq"] for x in json.loads(out)["lines"]] == [1, 2, 3, 4, 5]
    code, out = run(env, "--job-id", "cli-1", "--tail", "2", "--json")
    assert [x["seq"] for x in json.loads(out)["lines"]] == [21, 22]
    code, out = run(env, "--job-id", "cli-1", "--limit", "3")
    assert code == 0 and "line 1" in out and "line 3" in out and "--after 3" in out


def test_follow_prints_until_the_end(env: dict[str, str]) -> None:
    code, out = run(env, "--job-id", "cli-1", "--follow", "--json")
    assert code == 0
    assert [json.loads(x)["seq"] for x in out.splitlines()] == list(range(1, 23))


def test_search_and_summary(env: dict[str, str]) -> None:
    code, out = run(env, "search", "error", "--since", "2h", "--json")
    assert code == 0 and [h["seq"] for h in json.loads(out)["hits"]] == [21]
    code, out = run(env, "search", "error", "--since", "2h", "--repo", "other/repo", "--json")
    assert json.loads(out)["hits"] == []
    code, out = run(env, "summary", "--job-id", "cli-1", "--json")
    s = json.loads(out)
    assert code == 0 and s["lines"] == 22 and s["error_lines"] == 1 and s["complete"]
    code, out = run(env, "summary", "--job-id", "cli-1")
    assert "22 lines" in out and "complete" in out


def test_errors_are_clear(env: dict[str, str]) -> None:
    code, out = run(env, "--job-id", "nobody")
    assert code == 1 and "404" in out and "nobody" in out
    code, out = run(env, "search", "x", "--since", "soon")
    assert code == 1 and "duration" in out
    code, out = run({**env, "SMITH_OPERATOR_TOKEN": "garbage"}, "--job-id", "cli-1")
    assert code == 1 and "401" in out


def test_unreachable_pipeline_is_a_clear_error() -> None:
    from smith.testing.servers import free_port

    env = {"SMITH_LOGS_URL": f"http://127.0.0.1:{free_port()}", "SMITH_OPERATOR_TOKEN": operator_token()}
    for args in (["--job-id", "j"], ["--job-id", "j", "--follow"], ["search", "x"], ["summary", "--job-id", "j"]):
        code, out = run(env, *args)
        assert code == 1 and "cannot reach the log pipeline" in out, args


def test_search_defaults_to_a_window_and_since_reaches_further(env: dict[str, str]) -> None:
    """Without --since (or --job-id) a search reads the last day only, and says so; --since goes further back."""
    old = time.time() - 3 * 86400  # within the retention (30 days), outside the default window (24 h)
    with httpx.Client(base_url=env["SMITH_LOGS_URL"]) as c:
        body = orjson.dumps({"job_id": "cli-old", "seq": 1, "ts": old, "line": "ancient failure"})
        assert c.post("/v1/logs", content=body, headers=writer("cli-old")).status_code == 200
    code, out = run(env, "search", "ancient", "--json")
    result = json.loads(out)
    assert code == 0 and result["hits"] == [] and result["since"] > old
    code, out = run(env, "search", "ancient")
    assert code == 0 and "searched since" in out and "default window" in out
    code, out = run(env, "search", "ancient", "--since", "4d", "--json")
    assert [h["job_id"] for h in json.loads(out)["hits"]] == ["cli-old"]
    code, out = run(env, "search", "ancient", "--job-id", "cli-old", "--json")
    assert [h["job_id"] for h in json.loads(out)["hits"]] == ["cli-old"]
