"""The log pipeline's /metrics after lines are written, resent and refused."""

from __future__ import annotations

import httpx

from tests.logs.test_app import client, ndjson, server, writer  # noqa: F401  (fixtures)
from tests.scrape import parse, value


def test_lines_written_duplicate_and_refused_are_counted(client: httpx.Client) -> None:  # noqa: F811
    before = parse(client.get("/metrics").text)
    assert client.post("/v1/logs", content=ndjson("m1", range(1, 11)), headers=writer("m1")).status_code == 200
    assert client.post("/v1/logs", content=ndjson("m1", range(5, 13)), headers=writer("m1")).status_code == 200
    bad = ndjson("m1", range(20, 22)) + b"\nnot json\n{}"
    assert client.post("/v1/logs", content=bad, headers=writer("m1")).status_code == 400
    after = parse(client.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("smith_log_lines_ingested_total") == 12
    assert grew("smith_log_lines_duplicate_total") == 6
    assert grew("smith_log_lines_rejected_total", reason="malformed") == 2
    assert grew("smith_log_batch_seconds_count") >= 2
