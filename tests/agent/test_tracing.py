"""One trace follows a job from the signed webhook to its final report, across the control plane and the agent
(trace context in the job record, the lease and the reports), exported to an in-memory exporter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from smith import tracing
from smith.testing.fleet import fleet
from tests.control.conftest import queued_payload


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup(None, "test", exporter=exporter)
    yield exporter
    tracing.shutdown()


async def wait_for(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_one_trace_from_webhook_to_final_report(
    redis_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with fleet(redis_url, tmp_path, agents=1) as f:
        body = orjson.dumps(queued_payload(9101))
        async with httpx.AsyncClient(base_url=f.url) as c:
            r = await c.post("/webhooks/github", content=body, headers=f.signed_headers(body, "trace-9101"))
            assert r.status_code == 202
            auth = {"Authorization": f"Bearer {f.operator_token()}"}

            async def final() -> bool:
                return (await c.get("/v1/jobs/9101", headers=auth)).json()["state"] == "succeeded"

            deadline = time.monotonic() + 30
            while not await final():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await wait_for(lambda: any(s.name == "job" for s in spans.get_finished_spans()))
    got = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in got:
        by_name.setdefault(s.name, []).append(s)
    for name in ("webhook", "queue", "lease", "job", "vm boot", "guest first line", "report"):
        assert name in by_name, f"no {name!r} span in {sorted(by_name)}"
    [webhook] = by_name["webhook"]
    trace_id = webhook.context.trace_id
    assert all(s.context.trace_id == trace_id for s in got), "every span is in the job's one trace"
    [lease], [job] = by_name["lease"], by_name["job"]
    assert lease.parent.span_id == webhook.context.span_id
    assert by_name["queue"][0].parent.span_id == webhook.context.span_id
    assert job.parent.span_id == lease.context.span_id  # across processes: the agent continued the lease
    for child in ("vm boot", "guest first line", "report"):
        assert all(s.parent.span_id == job.context.span_id for s in by_name[child]), child
    assert sorted(s.attributes["state"] for s in by_name["report"]) == ["running", "succeeded"]
    assert by_name["queue"][0].start_time <= lease.start_time


def test_tracing_off_builds_nothing() -> None:
    """Off: no provider, no exporter imported, spans are a shared null context (redis-py and FastAPI may
    import the OpenTelemetry API and SDK themselves when installed; Smith adds nothing)."""
    code = """
import sys
from smith import tracing
from smith.agent import daemon
from smith.control.app import create_app
assert not tracing.setup(object(), "x")
with tracing.span("x"):
    pass
assert tracing.traceparent() is None
assert not [m for m in sys.modules if m.startswith("opentelemetry.exporter")], "exporter imported"
assert not tracing.enabled()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
