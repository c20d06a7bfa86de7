"""The control plane's reaper survives an unexpected error (EMFILE from its Redis call) and reclaims later."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from smith.adapters.redis.jobs import RedisJobs
from tests.control.conftest import Control, queued_payload
from tests.control.test_queue import job, lease


def test_the_reaper_goes_on_after_an_unexpected_error(control: Control, monkeypatch: pytest.MonkeyPatch) -> None:
    real = RedisJobs.reclaim
    calls: list[str] = []

    async def failing_once(self: RedisJobs, *args: Any, **kwargs: Any) -> dict[str, int]:
        calls.append("call")
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(RedisJobs, "reclaim", failing_once)
    control.deliver(queued_payload(2101))
    a, b = control.agent("agent-a"), control.agent("agent-b")
    assert lease(a)["job"]["id"] == "2101"  # type: ignore[index]
    # A never heartbeats: once the 2 s lease has expired, the reaper (which failed once meanwhile) requeues it.
    got = lease(b, wait=20)
    assert got is not None and got["job"]["id"] == "2101" and got["job"]["attempt"] == 2
    assert len(calls) >= 2 and job(control, "2101")["attempts"] == 2
