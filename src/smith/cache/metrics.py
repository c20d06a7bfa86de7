"""The cache server's metrics (docs/parts/observability.md): hits, misses and bytes per org, and the object
store's circuit state (read at scrape time; its errors are counted by the adapter, ``smith_s3_errors_total``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter

from smith.metrics import CIRCUIT_STATES, Bounded, Family

HITS = Counter("smith_cache_hits_total", "Cache restores that found an entry, by org", ["org"])
MISSES = Counter("smith_cache_misses_total", "Cache restores that found none, by org", ["org"])
BYTES = Counter(
    "smith_cache_bytes_total", "Cache bytes saved (upload) and served (download), by org", ["org", "direction"]
)
_org = Bounded()


def lookup(org: str, hit: bool) -> None:
    (HITS if hit else MISSES).labels(org=_org(org)).inc()


def moved(org: str, direction: str, size: int) -> None:
    BYTES.labels(org=_org(org), direction=direction).inc(size)


def families(store: Any) -> Iterable[Family]:
    breaker = getattr(getattr(store, "io", None), "breaker", None)
    if breaker is not None:
        yield Family(
            "smith_s3_circuit_state",
            "Object store circuit: 0 closed, 1 half-open, 2 open",
            (),
            {(): CIRCUIT_STATES[breaker.state]},
        )
