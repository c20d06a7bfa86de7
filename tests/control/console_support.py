"""What the console tests share: a control plane with a real log pipeline (chdb) behind it, and an agent played
over the real HTTP APIs (register, lease, running, ship lines with the lease's own log token, succeeded)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from smith.adapters.chdb import ChdbClickHouse
from smith.logs.app import create_app as create_logs_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer
from tests.control.conftest import AGENT_SECRET, OPERATOR_SECRET, Control

BIG = {"free_vcpus": 64, "free_memory_mib": 262144, "wait_seconds": 2}


@pytest.fixture
def logs_url(chdb_dir: Path) -> Iterator[str]:
    settings = LogsSettings(
        agent_token_secret=AGENT_SECRET,
        jwt_secret=OPERATOR_SECRET,
        clickhouse_database=f"t_{uuid.uuid4().hex[:12]}",
        logs_batch_delay_seconds=0.02,
    )
    with ThreadedServer(create_logs_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        yield srv.url


@pytest.fixture
def console(control_factory: Callable[..., Control], logs_url: str) -> Control:
    # The played agent sends no heartbeats: leases long enough not to be reclaimed meanwhile.
    return control_factory(logs_url=logs_url, lease_ttl_seconds=120)


@dataclass
class PlayedAgent:
    """One agent, played by hand over the control plane's and log pipeline's APIs."""

    control: Control
    agent_id: str = "host-a"

    def __post_init__(self) -> None:
        self.http = self.control.agent(self.agent_id)
        self.leases: dict[str, dict[str, Any]] = {}

    def lease(self) -> str:
        got = self.http.post("/v1/agents/lease", json=BIG)
        assert got.status_code == 200, got.text
        lease = got.json()
        self.leases[lease["job"]["id"]] = lease
        return str(lease["job"]["id"])

    def report(self, job_id: str, state: str, exit_code: int | None = None) -> None:
        r = self.http.post(f"/v1/agents/jobs/{job_id}/status", json={"state": state, "exit_code": exit_code})
        assert r.status_code == 200, r.text

    def ship(self, job_id: str, lines: list[str], first_seq: int = 1, last: bool = False) -> None:
        lease = self.leases[job_id]
        body = b"\n".join(
            orjson.dumps(
                {
                    "job_id": job_id,
                    "seq": first_seq + n,
                    "ts": time.time(),
                    "line": text,
                    "last": last and n == len(lines) - 1,
                }
            )
            for n, text in enumerate(lines)
        )
        r = httpx.post(
            lease["logs_url"] + "/v1/logs",
            content=body,
            headers={"Authorization": f"Bearer {lease['logs_token']}", "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 200, r.text
