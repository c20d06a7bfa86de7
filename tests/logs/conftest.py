"""Fixtures for the log pipeline: chdb in-process, a real ClickHouse server over HTTP when one is installed.

chdb opens one data directory per process, so the whole test session shares one directory and each test gets
its own database in it. The HTTP server is whatever ``clickhouse-server`` (Debian's 18.16) or ``clickhouse``
(upstream single binary, ``clickhouse server``) is on PATH / in /usr/sbin; tests needing it skip otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from smith import tokens
from smith.adapters.chdb import ChdbClickHouse
from smith.adapters.clickhouse_http import HttpClickHouse
from smith.logs.settings import LogsSettings
from smith.logs.store import LogStore
from smith.ports import ClickHouse
from smith.testing.clickhouse import ServerFaults, chdb_http_app
from smith.testing.servers import ThreadedServer, free_port

AGENT_SECRET = "agent-secret-for-tests-0123456789abcdef"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
CH_PASSWORD = "ch-test-password"


def agent_token(agent_id: str = "host-1") -> str:
    return tokens.mint(AGENT_SECRET, scope="agent", subject=agent_id, ttl_seconds=3600, agent_id=agent_id)


def logs_token(job_id: str, agent_id: str = "host-1") -> str:
    """The per-job log token the control plane hands with a lease."""
    return tokens.mint_logs(AGENT_SECRET, job_id=job_id, agent_id=agent_id, ttl_seconds=3600)


def operator_token() -> str:
    return tokens.mint(JWT_SECRET, scope="operator", subject="alice", ttl_seconds=3600)


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def _server_binary() -> list[str] | None:
    for name in ("clickhouse-server",):
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if found:
            return [found]
    found = shutil.which("clickhouse")
    if found:
        return [found, "server"]
    return None


_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{port}</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password>{password}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ClickHouse server over HTTP: SMITH_TEST_CLICKHOUSE_URL, or one started here."""
    external = os.environ.get("SMITH_TEST_CLICKHOUSE_URL")
    if external:
        yield external
        return
    binary = _server_binary()
    if binary is None:
        pytest.skip("no ClickHouse server binary (apt-get install clickhouse-server); HTTP path not tested")
    d = tmp_path_factory.mktemp("clickhouse")
    port = free_port()
    (d / "config.xml").write_text(_CONFIG.format(port=port, dir=d))
    (d / "users.xml").write_text(_USERS.format(password=CH_PASSWORD))
    out = (d / "server.log").open("wb")
    proc = subprocess.Popen([*binary, f"--config-file={d / 'config.xml'}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ClickHouse server did not start: {(d / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    out.close()


_FAULTS = ServerFaults()


@pytest.fixture(scope="session")
def chdb_over_http(chdb_dir: Path) -> Iterator[str]:
    """URL of ClickHouse's HTTP interface in front of chdb (a current engine, ``smith.testing.clickhouse``): how the
    HTTP adapter's modern dialect is tested where no current server can be installed."""
    with ThreadedServer(chdb_http_app(chdb_dir, password=CH_PASSWORD, faults=_FAULTS)) as srv:
        yield srv.url


@pytest.fixture
def server_faults(chdb_over_http: str) -> Iterator[ServerFaults]:
    """The failures and profile settings of ``chdb_over_http``, cleared after the test."""
    _FAULTS.seen.clear()
    yield _FAULTS
    _FAULTS.pending.clear()
    _FAULTS.profile.clear()
    _FAULTS.constrained.clear()
    _FAULTS.seen.clear()


@pytest.fixture(params=["chdb", "http", "http-modern"])
async def clickhouse(request: pytest.FixtureRequest) -> AsyncIterator[ClickHouse]:
    """Each ClickHouse adapter in turn: chdb; a real server over HTTP (skipped if none; 18.16 here, so the legacy
    dialect); the HTTP adapter against a current engine (chdb behind ClickHouse's HTTP interface)."""
    ch: ClickHouse
    if request.param == "chdb":
        ch = ChdbClickHouse(request.getfixturevalue("chdb_dir"))
    elif request.param == "http":
        ch = HttpClickHouse(request.getfixturevalue("clickhouse_server"), password=CH_PASSWORD)
    else:
        ch = HttpClickHouse(request.getfixturevalue("chdb_over_http"), password=CH_PASSWORD)
    yield ch
    await ch.aclose()


@pytest.fixture
async def store(clickhouse: ClickHouse, database: str) -> AsyncIterator[LogStore]:
    s = LogStore(clickhouse, database=database, retention_days=30)
    await s.start()
    yield s
    await clickhouse.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
def settings(database: str) -> LogsSettings:
    return LogsSettings(
        agent_token_secret=AGENT_SECRET,
        jwt_secret=JWT_SECRET,
        clickhouse_database=database,
        logs_batch_delay_seconds=0.02,
        logs_follow_poll_seconds=0.1,
    )
