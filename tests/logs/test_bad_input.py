"""Bad input to the log pipeline gets a clear 400 in the documented error shape, never a 500: search times that
are not finite or past any date, seqs past 64 bits, lines that are not UTF-8; a gzip body of several members is
stored whole."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smith.logs.app import create_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer
from tests.logs.conftest import logs_token, operator_token
from tests.logs.test_logship import all_lines


@pytest.fixture
def url(settings: LogsSettings, chdb_dir: Path) -> Iterator[str]:
    from smith.adapters.chdb import ChdbClickHouse

    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        yield srv.url


def assert_refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert {"error", "message", "retryable"} <= set(body) and body["retryable"] is False, body
    for word in words:
        assert word in body["message"], body


def post(url: str, job: str, body: bytes, **headers: str) -> httpx.Response:
    """POST ``body`` with the log token of ``job`` (the only job whose lines it may carry)."""
    headers = {"Authorization": f"Bearer {logs_token(job)}", "Content-Type": "application/x-ndjson", **headers}
    return httpx.post(f"{url}/v1/logs", content=body, headers=headers)


def ndjson(job: str, seqs: range) -> bytes:
    return b"".join(
        json.dumps({"job_id": job, "seq": s, "ts": time.time(), "stream": "stdout", "line": f"l {s}"}).encode() + b"\n"
        for s in seqs
    )


def test_search_times_must_be_finite_dates(url: str) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_token()}"}) as c:
        for bad in ("nan", "inf", "-inf", "1e20", "1e999", "99999999999999999999w"):
            assert_refused(c.get("/v1/logs/search", params={"q": "x", "since": bad}), "since")
            assert_refused(c.get("/v1/logs/search", params={"q": "x", "until": bad}), "until")
        assert c.get("/v1/logs/search", params={"q": "x", "since": "1h"}).status_code == 200


def test_numbers_past_64_bits_are_refused(url: str) -> None:
    assert post(url, "big-1", ndjson("big-1", range(1, 3))).status_code == 200
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_token()}"}) as c:
        assert_refused(c.get("/v1/jobs/big-1/logs", params={"after": 2**70}), "after")
        assert_refused(c.get("/v1/jobs/big-1/logs", params={"after": -1}), "after")
        assert_refused(c.get("/v1/jobs/big-1/logs", params={"limit": "abc"}), "limit")
    assert_refused(post(url, "big-2", ndjson("big-2", range(2**70, 2**70 + 1))), "line 1")
    assert_refused(post(url, "big-2", ndjson("big-2", range(2**63, 2**63 + 1))), "line 1")


def test_a_line_that_is_not_utf8_is_refused(url: str) -> None:
    body = b'{"job_id": "u-1", "seq": 1, "ts": 1.7e9, "stream": "stdout", "line": "caf\xe9"}\n'
    assert_refused(post(url, "u-1", body), "line 1")


def test_every_gzip_member_is_stored(url: str) -> None:
    body = gzip.compress(ndjson("gz-1", range(1, 4))) + gzip.compress(ndjson("gz-1", range(4, 7)))
    r = post(url, "gz-1", body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 6
    assert [x["seq"] for x in all_lines(url, "gz-1")] == [1, 2, 3, 4, 5, 6]


def test_gzip_members_together_past_the_limit_are_refused(settings: LogsSettings, url: str) -> None:
    line = json.dumps({"job_id": "gz-2", "seq": 1, "ts": 1.7e9, "stream": "stdout", "line": "x" * 4000}).encode()
    half = (line + b"\n") * (settings.logs_max_body_bytes // 2 // len(line) + 1)  # each member: over half
    r = post(url, "gz-2", gzip.compress(half) + gzip.compress(half), **{"Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert_refused(post(url, "gz-2", gzip.compress(half)[:-20], **{"Content-Encoding": "gzip"}), "gzip")  # cut short
