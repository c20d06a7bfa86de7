"""SMITH_OTEL_*: spans leave over OTLP/HTTP to the endpoint, with the configured headers, sampled by ratio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smith import tracing
from smith.errors import ConfigError
from smith.settings import CommonSettings
from smith.testing.servers import ThreadedServer


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def traces(request: Request) -> Response:
        got.append((dict(request.headers), await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    with ThreadedServer(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])) as srv:
        yield srv.url, got
    tracing.shutdown()


def names(got: list[tuple[dict[str, str], bytes]]) -> list[str]:
    out = []
    for _, body in got:
        req = ExportTraceServiceRequest.FromString(body)
        out += [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return out


def test_spans_reach_the_otlp_http_endpoint_with_headers(collector: tuple[str, list]) -> None:
    url, got = collector
    settings = CommonSettings(otel_exporter_endpoint=url, otel_exporter_headers=SecretStr("x-api-key=abc123, team=ci"))
    assert tracing.setup(settings, "test")
    with tracing.span("outer"), tracing.span("inner"):
        assert tracing.traceparent() is not None
    tracing.shutdown()  # flushes the batch
    assert sorted(names(got)) == ["inner", "outer"]
    headers = got[0][0]
    assert headers["x-api-key"] == "abc123" and headers["team"] == "ci"


def test_ratio_zero_samples_nothing(collector: tuple[str, list]) -> None:
    url, got = collector
    tracing.setup(CommonSettings(otel_exporter_endpoint=url, otel_sampler_ratio=0.0), "test")
    with tracing.span("dropped"):
        pass
    tracing.shutdown()
    assert names(got) == []


def test_headers_must_be_pairs() -> None:
    assert tracing.parse_headers(" a=1 ,b=x=y,") == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        tracing.parse_headers("novalue")
