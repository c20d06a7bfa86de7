"""The console's cache page reads a real cache server's usage per org (GET /usage with a cache-admin token the
control plane mints itself; the browser holds none)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from smith.cache.app import create_app as create_cache_app
from smith.cache.settings import CacheSettings
from smith.testing.servers import ThreadedServer
from tests.cache.conftest import SECRET, token
from tests.control.conftest import Control, operator_token


@pytest.fixture
def cache_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    settings = CacheSettings(
        redis_url=redis_url, cache_shared_secret=SECRET, cache_storage_path=tmp_path / "blobs", data_dir=tmp_path
    )
    with ThreadedServer(create_cache_app(settings, janitor=False)) as srv:
        yield srv.url


def test_cache_usage_per_org_comes_from_the_cache_server(
    control_factory: Callable[..., Control], cache_url: str
) -> None:
    for org, key in (("acme", "a"), ("acme", "b"), ("globex", "c")):  # misses are counted per org
        r = httpx.get(
            cache_url + "/_apis/artifactcache/cache",
            params={"keys": key, "version": "a" * 64},
            headers={"Authorization": f"Bearer {token(org=org)}"},
        )
        assert r.status_code == 204
    control = control_factory(cache_url=cache_url, cache_shared_secret=SECRET)
    with control.client(operator_token()) as c:
        html = c.get("/ui/cache/table").text
    rows = {cells[0]: cells for cells in _rows(html)}
    assert rows["acme"][4] == "2" and rows["acme"][5] == "0%"  # misses, hit rate
    assert rows["globex"][4] == "1"


def test_a_cache_server_that_refuses_is_shown_not_raised(
    control_factory: Callable[..., Control], cache_url: str
) -> None:
    control = control_factory(cache_url=cache_url, cache_shared_secret="not-the-cache-secret-0123456789abcdef")
    with control.client(operator_token()) as c:
        r = c.get("/ui/cache/table")
    assert r.status_code == 200 and "answered 401" in r.text


def _rows(html: str) -> list[list[str]]:
    body = html.split("<tbody>", 1)[1]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("<tr>")[1:]]
