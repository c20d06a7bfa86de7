"""OpenTelemetry tracing, on when ``SMITH_OTEL_EXPORTER_ENDPOINT`` is set; off (the default) it costs nothing:
the SDK is never imported and every call below returns at once.

One trace follows a job across processes. Its context travels as a W3C ``traceparent`` string: in the job
record (``Job.trace``, set under the ``webhook`` span), in the lease (``LeaseResponse.traceparent``, the
``lease`` span) and in the agent's reports (``StatusReport.traceparent``, the agent's ``job`` span). Spans:

    webhook (control plane)
    ├── queue            job created -> leased (recorded at the lease with its real start time)
    └── lease            the hand-over
        └── job          agent: the whole run
            ├── vm boot
            ├── guest first line   job start -> the guest's first line
            └── report   control plane: each state report (running, then the final one)

Settings (every service): ``SMITH_OTEL_EXPORTER_ENDPOINT`` (``http://collector:4318`` for OTLP/HTTP, where
``/v1/traces`` is added to a bare host; ``collector:4317`` for gRPC), ``SMITH_OTEL_EXPORTER_PROTOCOL``
(``http/protobuf`` or ``grpc``), ``SMITH_OTEL_EXPORTER_HEADERS`` (``key=value,key2=value2``, e.g. an API key),
``SMITH_OTEL_SAMPLER_RATIO`` (0..1, of new traces; a child follows its parent's decision).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from smith.errors import ConfigError

T = TypeVar("T")
_tracer: Any = None  # an OpenTelemetry tracer once ``setup`` has turned tracing on
_provider: Any = None
Manager = AbstractContextManager[Any]
_NULL: Manager = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def parse_headers(raw: str | None) -> dict[str, str]:
    """``key=value,key2=value2`` (spaces around items allowed) -> a dict; ``ConfigError`` on an item without '='."""
    out: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("SMITH_OTEL_EXPORTER_HEADERS must be key=value pairs separated by commas")
        out[key.strip()] = value.strip()
    return out


def setup(settings: Any, service: str, *, exporter: Any = None) -> bool:
    """Turn tracing on for this process if an endpoint is set (or ``exporter`` is given: tests pass an
    in-memory one, exported span by span). Returns whether tracing is on."""
    global _tracer, _provider
    endpoint = getattr(settings, "otel_exporter_endpoint", None)
    if exporter is None and not endpoint:
        return enabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = float(getattr(settings, "otel_sampler_ratio", 1.0))
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"smith-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    _provider, _tracer = provider, provider.get_tracer("smith")
    return True


def _exporter(settings: Any) -> Any:
    endpoint: str = settings.otel_exporter_endpoint
    secret = settings.otel_exporter_headers
    headers = parse_headers(secret.get_secret_value() if secret is not None else None)
    if settings.otel_exporter_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(endpoint=endpoint, headers=headers, insecure=not endpoint.startswith("https://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return Http(endpoint=endpoint, headers=headers)


def shutdown() -> None:
    """Flush and turn tracing off (tests; at exit the SDK flushes by itself)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _context(parent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None


def _has_current() -> bool:
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().is_valid


def span(
    name: str, parent: str | None = None, *, child_only: bool = False, **attrs: Any
) -> AbstractContextManager[Any]:
    """A span around a block, child of ``parent`` (a traceparent) or else of the current span. With
    ``child_only``, no span when there is neither (a warm-pool boot is no job's)."""
    if _tracer is None or (child_only and not parent and not _has_current()):
        return _NULL
    manager: Manager = _tracer.start_as_current_span(name, context=_context(parent), attributes=_attrs(attrs))
    return manager


def record(name: str, start: float, end: float | None = None, parent: str | None = None, **attrs: Any) -> None:
    """A span that already happened (wall-clock ``start`` .. ``end``, default now), child of ``parent`` or of
    the current span (none if there is neither)."""
    if _tracer is None or (not parent and not _has_current()):
        return
    s = _tracer.start_span(name, context=_context(parent), start_time=_ns(start), attributes=_attrs(attrs))
    s.end(end_time=_ns(end if end is not None else time.time()))


def traceparent() -> str | None:
    """The current span as a W3C traceparent, to carry to another process; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def stamp(job: T) -> T:
    """``job`` (a dataclass with a ``trace`` field) carrying the current span's traceparent, when tracing is on."""
    parent = traceparent()
    return dataclasses.replace(job, trace=parent) if parent else job  # type: ignore[type-var]


def within(work: Coroutine[Any, Any, T], name: str, parent: str | None = None, **attrs: Any) -> Coroutine[Any, Any, T]:
    """``work`` run inside a span (for a task's whole life); ``work`` itself when tracing is off."""
    if _tracer is None:
        return work

    async def run() -> T:
        with span(name, parent, **attrs):
            return await work

    return run()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}
