"""The log pipeline's HTTP API under a real uvicorn server on loopback, with chdb behind it."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from smith import tokens
from smith.adapters.chdb import ChdbClickHouse
from smith.logs.app import create_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer
from tests.logs.conftest import AGENT_SECRET, agent_token, logs_token, operator_token

AGENT = {"Authorization": f"Bearer {agent_token('host-9')}"}


def writer(job: str) -> dict[str, str]:
    """Headers with the log token the control plane hands with job's lease (agent host-9)."""
    return {"Authorization": f"Bearer {logs_token(job, 'host-9')}"}


OPERATOR = {"Authorization": f"Bearer {operator_token()}"}


T0 = float(int(time.time()) - 3600)  # recent: older lines than the retention are dropped at insert (TTL)


def ndjson(job: str, seqs: range, **fields: Any) -> bytes:
    return b"\n".join(
        orjson.dumps({"job_id": job, "seq": s, "ts": T0 + s, "line": f"line {s}", **fields}) for s in seqs
    )


class GatedClickHouse(ChdbClickHouse):
    """chdb whose inserts wait for a gate: lets a test hold the batcher full."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()

    async def insert(self, table: str, rows: bytes, settings: Mapping[str, str | int] | None = None) -> None:
        import asyncio

        await asyncio.to_thread(self.gate.wait, 30)
        await super().insert(table, rows, settings)


@pytest.fixture
def server(settings: LogsSettings, chdb_dir: Path) -> Iterator[tuple[str, GatedClickHouse]]:
    ch = GatedClickHouse(chdb_dir)
    with ThreadedServer(create_app(settings, clickhouse=ch)) as srv:
        yield srv.url, ch
        ch.gate.set()


@pytest.fixture
def client(server: tuple[str, GatedClickHouse]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def test_tokens_and_scopes(client: httpx.Client) -> None:
    assert client.post("/v1/logs", content=ndjson("j1", range(1, 2))).status_code == 401
    # an operator token is signed with another secret: not valid here at all
    assert client.post("/v1/logs", content=ndjson("j1", range(1, 2)), headers=OPERATOR).status_code == 401
    wrong_scope = tokens.mint(AGENT_SECRET, scope="cache", subject="x", ttl_seconds=60)
    r = client.post("/v1/logs", content=ndjson("j1", range(1, 2)), headers={"Authorization": f"Bearer {wrong_scope}"})
    assert r.status_code == 403
    assert client.get("/v1/jobs/j1/logs").status_code == 401
    assert client.get("/v1/jobs/j1/logs", headers=AGENT).status_code == 401
    assert client.get("/v1/logs/search", headers=AGENT).status_code == 401


def test_ingest_then_read_page_tail_summary_search(client: httpx.Client) -> None:
    r = client.post("/v1/logs", content=ndjson("j1", range(1, 251), repo="acme/api"), headers=writer("j1"))
    assert r.status_code == 200 and r.json() == {"accepted": 250, "duplicates": 0, "truncated": 0}
    client.post("/v1/logs", content=ndjson("j1", range(251, 252), stream="system", last=True), headers=writer("j1"))
    page = client.get("/v1/jobs/j1/logs", params={"limit": 100}, headers=OPERATOR).json()
    assert [x["seq"] for x in page["lines"]] == list(range(1, 101)) and page["next_after"] == 100
    assert not page["complete"] and page["lines"][0]["host"] == "host-9" and page["lines"][0]["repo"] == "acme/api"
    page = client.get("/v1/jobs/j1/logs", params={"after": 200, "limit": 100}, headers=OPERATOR).json()
    assert [x["seq"] for x in page["lines"]] == list(range(201, 252)) and page["complete"]
    tail = client.get("/v1/jobs/j1/logs", params={"tail": 5}, headers=OPERATOR).json()
    assert [x["seq"] for x in tail["lines"]] == [247, 248, 249, 250, 251] and tail["complete"]
    assert tail["lines"][-1]["last"] is True and tail["lines"][0]["last"] is False
    assert isinstance(tail["lines"][0]["ts"], float) and tail["lines"][0]["truncated"] is False
    past = client.get("/v1/jobs/j1/logs", params={"after": 251}, headers=OPERATOR).json()
    assert past == {"job_id": "j1", "lines": [], "next_after": 251, "complete": True}
    client.post("/v1/logs", content=ndjson("j1b", range(1, 4)), headers=writer("j1b"))
    running = client.get("/v1/jobs/j1b/logs", params={"after": 3}, headers=OPERATOR).json()
    assert running["lines"] == [] and running["next_after"] == 3 and not running["complete"]
    assert not client.get("/v1/jobs/j1b/logs", params={"tail": 2}, headers=OPERATOR).json()["complete"]
    summary = client.get("/v1/jobs/j1/logs/summary", headers=OPERATOR).json()
    assert summary["lines"] == 251 and summary["complete"] and summary["first_ts"] == T0 + 1
    hits = client.get("/v1/logs/search", params={"q": "LINE 25", "since": "2h"}, headers=OPERATOR).json()
    assert sorted(h["seq"] for h in hits["hits"]) == [25, 250, 251]
    assert client.get("/v1/logs/search", params={"since": "soon"}, headers=OPERATOR).status_code == 400


def test_unknown_job_is_404(client: httpx.Client) -> None:
    assert client.get("/v1/jobs/nobody/logs", headers=OPERATOR).status_code == 404
    assert client.get("/v1/jobs/nobody/logs", params={"follow": "true"}, headers=OPERATOR).status_code == 404
    assert client.get("/v1/jobs/nobody/logs/summary", headers=OPERATOR).status_code == 404
    assert client.get("/v1/jobs/bad%20id/logs", headers=OPERATOR).status_code == 400


def test_retried_batch_is_stored_once(client: httpx.Client) -> None:
    body = ndjson("j2", range(1, 101))
    assert client.post("/v1/logs", content=body, headers=writer("j2")).json()["accepted"] == 100
    again = client.post("/v1/logs", content=body, headers=writer("j2")).json()
    assert again == {"accepted": 0, "duplicates": 100, "truncated": 0}
    overlap = client.post("/v1/logs", content=ndjson("j2", range(51, 151)), headers=writer("j2")).json()
    assert overlap["accepted"] == 50 and overlap["duplicates"] == 50
    within = client.post("/v1/logs", content=ndjson("j2", range(151, 152)) * 1, headers=writer("j2")).json()
    assert within["accepted"] == 1
    seqs = [x["seq"] for x in client.get("/v1/jobs/j2/logs", params={"limit": 1000}, headers=OPERATOR).json()["lines"]]
    assert seqs == list(range(1, 152))
    assert client.get("/v1/jobs/j2/logs/summary", headers=OPERATOR).json()["lines"] == 151


def test_malformed_batch_names_lines_and_writes_nothing(client: httpx.Client) -> None:
    body = ndjson("j3", range(1, 3)) + b"\n{oops\n" + ndjson("j3", range(3, 4), stream="nope")
    r = client.post("/v1/logs", content=body, headers=writer("j3"))
    assert r.status_code == 400
    assert [b["line"] for b in r.json()["bad_lines"]] == [3, 4]
    assert client.get("/v1/jobs/j3/logs", headers=OPERATOR).status_code == 404


def test_oversized_lines_truncated_big_bodies_refused_gzip_taken(client: httpx.Client, settings: LogsSettings) -> None:
    long = "x" * (settings.logs_max_line_bytes * 2)
    r = client.post("/v1/logs", content=ndjson("j4", range(1, 2), line=long), headers=writer("j4"))
    assert r.json()["truncated"] == 1
    stored = client.get("/v1/jobs/j4/logs", headers=OPERATOR).json()["lines"][0]
    assert stored["truncated"] and stored["line"].endswith("bytes]")
    assert len(stored["line"].encode()) <= settings.logs_max_line_bytes
    big = b"x" * (settings.logs_max_body_bytes + 1)
    assert client.post("/v1/logs", content=big, headers=writer("j4")).status_code == 413
    zipped = gzip.compress(ndjson("j5", range(1, 11)))
    r = client.post("/v1/logs", content=zipped, headers={**writer("j5"), "Content-Encoding": "gzip"})
    assert r.json()["accepted"] == 10
    r = client.post("/v1/logs", content=b"not gzip", headers={**writer("j5"), "Content-Encoding": "gzip"})
    assert r.status_code == 400
    bomb = gzip.compress(b"\n" * (settings.logs_max_body_bytes + 10))
    assert (
        client.post("/v1/logs", content=bomb, headers={**writer("j5"), "Content-Encoding": "gzip"}).status_code == 413
    )


def test_full_batcher_pushes_back_with_429(database: str, chdb_dir: Path) -> None:
    settings = LogsSettings(
        agent_token_secret="agent-secret-for-tests-0123456789abcdef",
        jwt_secret="jwt-secret-for-tests-0123456789abcdef",
        clickhouse_database=database,
        logs_batch_rows=10,
        logs_max_pending_rows=20,
        logs_batch_delay_seconds=0.01,
    )
    ch = GatedClickHouse(chdb_dir)
    with ThreadedServer(create_app(settings, clickhouse=ch)) as srv:
        ch.gate.clear()
        results: list[httpx.Response] = []

        def post(seqs: range) -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                results.append(c.post("/v1/logs", content=ndjson("j6", seqs), headers=writer("j6")))

        first = threading.Thread(target=post, args=(range(1, 16),))
        first.start()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for _ in range(200):  # until the first batch is held at the gate
                if c.get("/readyz").json().get("pending") == 15:
                    break
                threading.Event().wait(0.02)
            r = c.post("/v1/logs", content=ndjson("j6", range(16, 26)), headers=writer("j6"))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json()["retryable"] is True
            ch.gate.set()
            first.join(30)
            assert results[0].status_code == 200 and results[0].json()["accepted"] == 15
            r = c.post("/v1/logs", content=ndjson("j6", range(16, 26)), headers=writer("j6"))
            assert r.status_code == 200
            lines = c.get("/v1/jobs/j6/logs", headers=OPERATOR).json()["lines"]
            assert [x["seq"] for x in lines] == list(range(1, 26))


def test_follow_streams_until_the_last_line(client: httpx.Client, server: tuple[str, GatedClickHouse]) -> None:
    client.post("/v1/logs", content=ndjson("j7", range(1, 4)), headers=writer("j7"))
    got: list[dict[str, Any]] = []
    ended = threading.Event()

    def follow() -> None:
        with (
            httpx.Client(base_url=server[0], timeout=30) as c,
            c.stream("GET", "/v1/jobs/j7/logs", params={"follow": "true"}, headers=OPERATOR) as resp,
        ):
            event = ""
            for raw in resp.iter_lines():
                if raw.startswith("event:"):
                    event = raw[6:].strip()
                elif raw.startswith("data:") and event == "line":
                    got.append(orjson.loads(raw[5:]))
                elif raw.startswith("data:") and event == "end":
                    ended.set()
                    return

    t = threading.Thread(target=follow)
    t.start()
    for _ in range(500):
        if len(got) >= 3:
            break
        threading.Event().wait(0.01)
    client.post("/v1/logs", content=ndjson("j7", range(4, 6)), headers=writer("j7"))
    client.post("/v1/logs", content=ndjson("j7", range(6, 7), stream="system", last=True), headers=writer("j7"))
    t.join(30)
    assert ended.is_set()
    assert [x["seq"] for x in got] == [1, 2, 3, 4, 5, 6] and got[-1]["last"]


@pytest.mark.parametrize("server", ["clickhouse_server", "chdb_over_http"])
def test_against_a_clickhouse_server_over_http(database: str, server: str, request: pytest.FixtureRequest) -> None:
    """The whole API with the HTTP adapter: against a real server (here Debian's 18.16, so the legacy dialect and
    NDJSON inserts), and against a current engine behind ClickHouse's HTTP interface (the modern dialect)."""
    from smith.adapters.clickhouse_http import HttpClickHouse
    from tests.logs.conftest import CH_PASSWORD

    clickhouse_server = request.getfixturevalue(server)

    settings = LogsSettings(
        agent_token_secret=AGENT_SECRET,
        jwt_secret="jwt-secret-for-tests-0123456789abcdef",
        clickhouse_database=database,
        logs_batch_delay_seconds=0.02,
    )
    ch = HttpClickHouse(clickhouse_server, password=CH_PASSWORD)
    with ThreadedServer(create_app(settings, clickhouse=ch)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/v1/logs", content=ndjson("h1", range(1, 101)), headers=writer("h1")).json()["accepted"] == 100
        again = c.post("/v1/logs", content=ndjson("h1", range(51, 121)), headers=writer("h1")).json()
        assert again["accepted"] == 20 and again["duplicates"] == 50
        lines = c.get("/v1/jobs/h1/logs", params={"limit": 1000}, headers=OPERATOR).json()["lines"]
        assert [x["seq"] for x in lines] == list(range(1, 121))
        hits = c.get("/v1/logs/search", params={"q": "line 11", "job_id": "h1"}, headers=OPERATOR).json()["hits"]
        assert sorted(h["seq"] for h in hits) == [11, *range(110, 120)]
        assert c.get("/v1/jobs/h1/logs/summary", headers=OPERATOR).json()["lines"] == 120
        dialect = c.get("/v1/logs/stats", headers=OPERATOR).json()["dialect"]
        assert dialect == "modern" if server == "chdb_over_http" else dialect in ("legacy", "modern")


class StuckClickHouse(ChdbClickHouse):
    """chdb whose searches never finish until cancelled (and note that they were)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.cancelled = threading.Event()

    async def select(self, sql: str, settings: Mapping[str, str | int] | None = None) -> list[dict[str, Any]]:
        import asyncio

        if "LIMIT 1 BY job_id, seq" not in sql:
            return await super().select(sql, settings)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return []


def test_a_search_is_cancelled_when_its_client_goes_away(settings: LogsSettings, chdb_dir: Path) -> None:
    """The client gave up (timed out, closed the connection): the search is cancelled, not run for nobody."""
    ch = StuckClickHouse(chdb_dir)
    with ThreadedServer(create_app(settings, clickhouse=ch)) as srv:
        with httpx.Client(base_url=srv.url, timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
            c.get("/v1/logs/search", params={"q": "x"}, headers=OPERATOR)
        assert ch.cancelled.wait(20)
