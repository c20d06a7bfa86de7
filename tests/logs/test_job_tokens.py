"""Issue 9, item 2: only the holder of a job's log token writes its lines, and the stored host is the token's."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from smith import tokens
from smith.adapters.chdb import ChdbClickHouse
from smith.agent.logship import LogShipper
from smith.logs.app import create_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer, free_port
from smith.wire.guest import GuestEvent
from tests.attacks import push_body
from tests.logs.conftest import AGENT_SECRET, agent_token, logs_token, operator_token

T0 = float(int(time.time()) - 60)
OPERATOR = {"Authorization": f"Bearer {operator_token()}"}


def lines(job: str, seqs: range, **fields: Any) -> bytes:
    return b"\n".join(
        orjson.dumps({"job_id": job, "seq": s, "ts": T0 + s, "line": f"line {s}", **fields}) for s in seqs
    )


def line(text: str) -> GuestEvent:
    return GuestEvent(type="line", ts=time.time(), stream="stdout", line=text)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(settings: LogsSettings, chdb_dir: Path) -> Iterator[httpx.Client]:
    with (
        ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        yield c


def test_another_agent_cannot_write_a_job_it_does_not_run(client: httpx.Client) -> None:
    forged = (
        lines("victim", range(2, 7), host="host-a") + b"\n" + lines("victim", range(7, 8), last=True, host="host-a")
    )
    # Agent B's own agent token: not a log token (the attack of the issue, accepted before).
    assert client.post("/v1/logs", content=forged, headers=bearer(agent_token("host-b"))).status_code == 403
    # Agent B's log token for a job it does run: not for this job, alone or mixed with its own lines.
    b_token = bearer(logs_token("bjob", "host-b"))
    assert client.post("/v1/logs", content=forged, headers=b_token).status_code == 403
    mixed = lines("bjob", range(1, 3)) + b"\n" + forged
    assert client.post("/v1/logs", content=mixed, headers=b_token).status_code == 403
    assert client.get("/v1/jobs/victim/logs", headers=OPERATOR).status_code == 404
    assert client.get("/v1/jobs/bjob/logs", headers=OPERATOR).status_code == 404  # nothing of a refused batch

    # Agent A's real lines are all stored, and the host is the token's whatever the body says.
    real = lines("victim", range(1, 8), host="somebody-else")
    r = client.post("/v1/logs", content=real, headers=bearer(logs_token("victim", "host-a")))
    assert r.status_code == 200 and r.json()["accepted"] == 7 and r.json()["duplicates"] == 0
    page = client.get("/v1/jobs/victim/logs", headers=OPERATOR).json()
    assert [x["line"] for x in page["lines"]] == [f"line {s}" for s in range(1, 8)]
    assert {x["host"] for x in page["lines"]} == {"host-a"}


def test_log_tokens_are_checked(client: httpx.Client) -> None:
    body = lines("j1", range(1, 2))
    now = int(time.time())
    claims = {"sub": "j1", "scope": "logs", "job_id": "j1", "agent_id": "h", "iat": now - 120, "exp": now - 60}
    expired = jwt.encode(claims, AGENT_SECRET, algorithm="HS256")
    assert client.post("/v1/logs", content=body, headers=bearer(expired)).status_code == 401
    no_job = tokens.mint(AGENT_SECRET, scope="logs", subject="j1", ttl_seconds=60, agent_id="h")
    assert client.post("/v1/logs", content=body, headers=bearer(no_job)).status_code == 403
    bad_host = jwt.encode({**claims, "exp": now + 60, "agent_id": ""}, AGENT_SECRET, algorithm="HS256")
    assert client.post("/v1/logs", content=body, headers=bearer(bad_host)).status_code == 403
    other_secret = tokens.mint_logs("x" * 40, job_id="j1", agent_id="h", ttl_seconds=60)
    assert client.post("/v1/logs", content=body, headers=bearer(other_secret)).status_code == 401
    assert client.post("/v1/logs", content=body, headers=bearer(logs_token("j1", "h"))).status_code == 200


async def test_shipper_sends_each_job_with_its_own_token_across_a_restart(
    settings: LogsSettings, chdb_dir: Path, tmp_path: Path
) -> None:
    """The agent keeps a job's token beside its spool: lines spooled while the pipeline was away are sent after the
    agent restarts, with that token; a job with no token cannot block the others."""
    spool, port = tmp_path / "spool", free_port()
    url = f"http://127.0.0.1:{port}"
    first = LogShipper(url, None, spool, max_backoff=0.2)
    await first.start()
    await first.start_job("job-t", logs_token("job-t", "host-t"))
    for i in range(1, 51):
        await first.send("job-t", line(f"t {i}"))
        await first.send("job-none", line(f"n {i}"))  # started without a token (e.g. spooled by an old agent)
    assert await first.close(drain_seconds=0.3) is False
    assert stat.S_IMODE((spool / "job-t" / "token").stat().st_mode) == 0o600
    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir)), port=port):
        again = LogShipper(url, None, spool)  # a restarted agent: no token but what the spool kept
        await again.start()
        await again.close_job("job-t")
        await again.close_job("job-none")
        assert await again.close(drain_seconds=20) is True
        async with httpx.AsyncClient(base_url=url, headers=OPERATOR) as c:
            page = (await c.get("/v1/jobs/job-t/logs", params={"limit": 100})).json()
            assert (await c.get("/v1/jobs/job-none/logs")).status_code == 404
    assert [x["line"] for x in page["lines"][:-1]] == [f"t {i}" for i in range(1, 51)] and page["complete"]
    assert {x["host"] for x in page["lines"]} == {"host-t"}


def test_an_unauthenticated_body_is_not_read(client: httpx.Client) -> None:
    status, sent = push_body(str(client.base_url), "/v1/logs", 50 * 1024 * 1024)
    assert sent < 16 * 1024 * 1024 and status in (401, None)


def test_a_separate_logs_secret_keeps_the_agent_secret_off_the_pipeline(database: str, chdb_dir: Path) -> None:
    logs_secret = "logs-secret-for-tests-0123456789abcdef"
    settings = LogsSettings(logs_token_secret=logs_secret, jwt_secret="j" * 40, clickhouse_database=database)
    assert settings.problems() == []
    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        body = lines("j1", range(1, 2))
        own = tokens.mint_logs(logs_secret, job_id="j1", agent_id="h", ttl_seconds=60)
        assert httpx.post(srv.url + "/v1/logs", content=body, headers=bearer(own)).status_code == 200
        with_agent_secret = bearer(logs_token("j1", "h"))
        assert httpx.post(srv.url + "/v1/logs", content=body, headers=with_agent_secret).status_code == 401
