"""Job logs on the agent's disk: directories 0700 and files 0600, created so (not tightened after the fact),
whatever the umask."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smith.agent.logship import LogShipper
from smith.agent.logsink import LocalFiles
from smith.wire.guest import GuestEvent

EVENT = GuestEvent(type="line", ts=1.0, stream="stdout", line="secret build output")


@pytest.fixture
def loose_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """umask 0 and no chmod: a path is private only if it was created private."""
    old = os.umask(0)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_local_job_logs_are_private(tmp_path: Path, loose_umask: None) -> None:
    out = LocalFiles(tmp_path / "logs")
    await out.emit("job-1", EVENT)
    await out.close_job("job-1")
    assert mode(tmp_path / "logs") == 0o700
    assert mode(out.path("job-1")) == 0o600


async def test_spooled_and_rejected_job_logs_are_private(tmp_path: Path, loose_umask: None) -> None:
    refuse = httpx.MockTransport(lambda request: httpx.Response(400, json={"error": "bad"}))
    spool = tmp_path / "spool"
    async with LogShipper("http://logs", "token", spool, transport=refuse, flush_interval=0.01) as shipper:
        await shipper.emit("job-1", EVENT)
        for _ in range(500):
            if (spool / "job-1" / "rejected.ndjson").exists():
                break
            await asyncio.sleep(0.01)
        assert mode(spool) == 0o700 and mode(spool / "job-1") == 0o700
        assert mode(spool / "job-1" / "lines.ndjson") == 0o600
        assert mode(spool / "job-1" / "rejected.ndjson") == 0o600


async def test_an_existing_log_dir_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir(mode=0o755)
    os.chmod(tmp_path / "logs", 0o755)  # noqa: S103  (an older agent's loose directory)
    LocalFiles(tmp_path / "logs")
    assert mode(tmp_path / "logs") == 0o700
