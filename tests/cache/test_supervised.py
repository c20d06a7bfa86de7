"""The cache janitor survives an unexpected error (EMFILE under load) and runs again."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest

from smith.cache.app import create_app
from smith.cache.service import CacheService
from smith.cache.settings import CacheSettings
from smith.testing.servers import ThreadedServer


def test_the_janitor_goes_on_after_an_unexpected_error(
    settings: CacheSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CacheService.janitor_once
    calls: list[int] = []
    again = threading.Event()

    async def failing_once(self: CacheService, *args: Any, **kwargs: Any) -> dict[str, int]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        again.set()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(CacheService, "janitor_once", failing_once)
    s = settings.model_copy(update={"cache_janitor_interval_seconds": 0.05})
    with ThreadedServer(create_app(s, janitor=True)):
        assert again.wait(30), "the janitor never ran again after the error"
    assert len(calls) >= 2
