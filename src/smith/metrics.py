"""Prometheus metrics: what every service shares (the ``/metrics`` route, multiprocess mode, bounded labels).

Each service declares its own metrics in its ``metrics.py`` (``smith.control.metrics``...) with the official
client library. Two kinds:

- counters and histograms, updated where things happen (one-line hooks in the service code);
- gauges read at scrape time (queue depth from Redis, VMs from the agent's state): ``add_metrics_route`` takes
  an async ``snapshot`` that returns them as ``Family`` values, so no gauge is ever stale or per-worker.

Several worker processes (``smith control serve --workers N``): ``prepare_multiprocess`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start (prometheus_client picks its value store when it is first
imported), each worker writes its counters there, and a scrape of any worker sums them all.

``/metrics`` asks for ``Authorization: Bearer <SMITH_METRICS_TOKEN>`` when that setting is set (Prometheus:
``authorization: {credentials_file: ...}``); unset, it is open, like ``/healthz``: put only the webhook route
behind a public proxy (docs/parts/observability.md).
"""

from __future__ import annotations

import hmac
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from smith.errors import AuthError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a few milliseconds (a warm VM, a snapshot restore) to hours (a queue that nothing serves).
WAIT_BUCKETS = (
    *(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800),
    *(3600, 2 * 3600, 4 * 3600),
)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 2 * 3600, 4 * 3600, 6 * 3600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Family:
    """A gauge read at scrape time: ``samples`` maps label values (in ``labels`` order) to a value."""

    name: str
    doc: str
    labels: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)

    def metric(self) -> Metric:
        g = GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))
        for values, value in sorted(self.samples.items()):
            g.add_metric(list(values), value)
        return g


class _Snapshot:
    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            yield f.metric()


Snapshot = Callable[[], Awaitable[Iterable[Family]]]


def prepare_multiprocess(directory: Path) -> None:
    """Before starting worker processes: an empty directory for their metrics, named in the environment."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)


def render(families: Iterable[Family] = ()) -> bytes:
    """The exposition text: this process's metrics (every worker's in multiprocess mode), then ``families``."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Snapshot(families))
    return generate_latest(registry) + generate_latest(extra)


def check_token(expected: str | None, authorization: str | None) -> None:
    """``AuthError`` unless no token is configured or ``authorization`` is ``Bearer <expected>``."""
    if expected is None:
        return
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthError("/metrics needs Authorization: Bearer <SMITH_METRICS_TOKEN>")


def add_metrics_route(app: Any, token: Any, snapshot: Snapshot | None = None) -> None:
    """``GET /metrics`` on a FastAPI/Starlette app; ``token`` is the SecretStr of SMITH_METRICS_TOKEN or None."""
    from starlette.requests import Request
    from starlette.responses import Response

    secret = token.get_secret_value() if token is not None else None

    async def metrics(request: Request) -> Response:
        check_token(secret, request.headers.get("authorization"))
        families = await snapshot() if snapshot is not None else ()
        return Response(render(families), media_type=CONTENT_TYPE_LATEST)

    app.router.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


class Bounded:
    """Label values past the first ``limit`` distinct ones become ``other`` (an org per tenant is bounded by
    the tenants, but a process must not grow without end because of them)."""

    def __init__(self, limit: int = 500) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(value)
        return value


# -- shared by adapters: the S3 store (used by the cache) -------------------------------------------------

STORE_ERRORS = Counter("smith_s3_errors_total", "Failed object store calls, by error code", ["code"])
CIRCUIT_STATES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


def histogram_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram from its cumulative ``(le, count)`` buckets, as Prometheus's
    ``histogram_quantile`` estimates it: linear within the bucket it falls in (the last finite bound if in +Inf)."""
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for le, count in pairs:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower
