"""The cache server's /metrics: hits, misses and bytes per org; the object store's errors and circuit state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.cache import metrics
from smith.errors import Unavailable
from smith.metrics import Bounded
from tests.cache.conftest import client, token
from tests.cache.test_protocol import restore_v2, save_v2
from tests.cache.test_resilience import dead_store
from tests.scrape import parse, value


def test_hits_misses_and_bytes_per_org(serve: Any) -> None:
    srv = serve()
    before = parse(httpx.get(srv.url + "/metrics").text)
    with client(srv, token(org="metrics-org")) as c:
        assert restore_v2(c, "k-none") is None
        save_v2(c, "k1", b"x" * 1000)
        assert restore_v2(c, "k1") == ("k1", b"x" * 1000)
    after = parse(httpx.get(srv.url + "/metrics").text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("smith_cache_misses_total", org="metrics-org") == 1
    assert grew("smith_cache_hits_total", org="metrics-org") == 1
    assert grew("smith_cache_bytes_total", org="metrics-org", direction="upload") == 1000
    assert grew("smith_cache_bytes_total", org="metrics-org", direction="download") == 1000


async def test_store_errors_and_open_circuit(tmp_path: Path) -> None:
    store = dead_store(tmp_path)
    before = parse(_render(store))
    for _ in range(2):
        with pytest.raises(Unavailable):
            await store.check()
    after = parse(_render(store))
    assert value(after, "smith_s3_errors_total", code="unavailable") > value(
        before, "smith_s3_errors_total", code="unavailable"
    )
    assert value(before, "smith_s3_circuit_state") == 0 and value(after, "smith_s3_circuit_state") == 2


def _render(store: Any) -> str:
    from smith.metrics import render

    return render(metrics.families(store)).decode()


def test_org_labels_are_bounded() -> None:
    bounded = Bounded(limit=2)
    assert [bounded(o) for o in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
