"""Issue 9, item 7: files holding secrets or data are never readable by others, not even for a moment; API docs
are served only when asked for."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.cli.dev import dev_secrets
from smith.control.app import create_app as control_app
from smith.logs.app import create_app as logs_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer
from tests.control.conftest import make_settings

_watched: list[Path] = []
_leaks: list[str] = []
_busy = threading.local()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """At every file-system event while a directory is watched: any file in it that holds data and that others
    may read is a leak (the moment before a chmod, a rename...)."""
    if not _watched or getattr(_busy, "on", False) or not event.startswith(("open", "os.")):
        return
    _busy.on = True  # (looking triggers events too)
    try:
        for d in _watched:
            for name in os.listdir(d):
                st = os.stat(d / name)
                if stat.S_ISREG(st.st_mode) and st.st_size > 0 and stat.S_IMODE(st.st_mode) & 0o077:
                    _leaks.append(f"{name} mode {oct(stat.S_IMODE(st.st_mode))} at {event}")
    finally:
        _busy.on = False


sys.addaudithook(_audit)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Path]:
    old = os.umask(0o022)  # the usual umask: files are made 0644 unless asked otherwise
    _watched.append(tmp_path)
    _leaks.clear()
    try:
        yield tmp_path
    finally:
        _watched.remove(tmp_path)
        os.umask(old)


def test_dev_secrets_are_never_readable_by_others(watched: Path) -> None:
    secrets = dev_secrets(watched)
    path = watched / "dev-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and secrets["SMITH_JWT_SECRET"]
    assert _leaks == []
    assert [p.name for p in watched.iterdir()] == ["dev-secrets.json"]  # no temporary file left


def test_chdb_data_directory_is_private(tmp_path: Path) -> None:
    """chdb opens one directory per process: a fresh process opens a new one under the usual umask."""
    target = tmp_path / "logs" / "chdb"
    code = textwrap.dedent(
        f"""
        import asyncio, os
        os.umask(0o022)
        from pathlib import Path
        from smith.adapters.chdb import ChdbClickHouse
        async def main():
            ch = ChdbClickHouse(Path({str(target)!r}))
            await ch.connect()
            await ch.aclose()
        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def _docs(app: Any) -> dict[str, int]:
    with ThreadedServer(app) as srv:
        return {p: httpx.get(srv.url + p).status_code for p in ("/docs", "/redoc", "/openapi.json")}


def test_control_plane_serves_api_docs_only_when_asked(redis_url: str) -> None:
    assert set(_docs(control_app(make_settings(redis_url))).values()) == {404}
    assert set(_docs(control_app(make_settings(redis_url, api_docs=True))).values()) == {200}


def test_log_pipeline_serves_api_docs_only_when_asked(chdb_dir: Path) -> None:
    from smith.adapters.chdb import ChdbClickHouse

    for on in (False, True):
        settings = LogsSettings(
            agent_token_secret="a" * 40, jwt_secret="j" * 40, clickhouse_database="docs", api_docs=on
        )
        assert set(_docs(logs_app(settings, clickhouse=ChdbClickHouse(chdb_dir))).values()) == {200 if on else 404}
