"""The control plane's HTTP app: ``create_app(settings)`` is its composition root."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field

from smith import tokens, tracing
from smith.adapters.redis import connect
from smith.adapters.redis.group import Durability
from smith.adapters.redis.jobs import RedisJobs
from smith.control import console, metrics, wfrerun
from smith.control.ratelimit import TokenBucket
from smith.control.service import ControlPlane, job_view
from smith.control.settings import ControlSettings
from smith.control.spool import Spool
from smith.errors import AuthError, InvalidInput, RateLimited, RequestTimeout, SmithError
from smith.http import (
    ByteBudget,
    add_error_handlers,
    add_health_routes,
    api_docs,
    error_response,
    json_response,
    read_body,
)
from smith.logging import bind, get_logger
from smith.metrics import add_metrics_route
from smith.ports import RunnerCredentials
from smith.wire import agent as wire

log = get_logger("smith.control.http")


class SubmitRequest(BaseModel):
    run: str = Field(min_length=1, max_length=1_000_000, description="Shell script the job runs")
    labels: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=lambda: ["self-hosted"], max_length=256)
    repo: str = Field("", max_length=256)


class DispatchRequest(BaseModel):
    repository: str = Field(max_length=256, description="owner/name, configured in SMITH_WORKFLOW_REPOS")
    workflow: str = Field(max_length=1024, description="The workflow file's path, e.g. .github/workflows/ci.yml")
    ref: str = Field("main", max_length=256)
    inputs: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=65536)]] = Field(
        default_factory=dict, max_length=100
    )


class CancelRequest(BaseModel):
    reason: str = Field("cancelled by operator", max_length=500)


async def _agent_id(request: Request) -> str:
    """The caller's agent id; bound to the request's log lines (async: it runs in the request's own task)."""
    settings: ControlSettings = request.app.state.settings
    secret = settings.agent_token_secret.get_secret_value() if settings.agent_token_secret else None
    agent_id = tokens.agent_id(secret, request.headers.get("authorization"))
    bind(agent_id=agent_id)
    return agent_id


def _operator(request: Request) -> str:
    settings: ControlSettings = request.app.state.settings
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    claims = tokens.verify(secret, tokens.bearer(request.headers.get("authorization")), scope="operator")
    return str(claims["sub"])


Agent = Annotated[str, Depends(_agent_id)]
Operator = Annotated[str, Depends(_operator)]
M = TypeVar("M", bound=BaseModel)


async def _json_body(request: Request, model: type[M], limit: int) -> M:
    """The request's JSON body as ``model``, read only now (after the route's token dependency) and at most
    ``limit`` bytes (413). Routes take bodies this way, not as parameters: FastAPI reads a parameter's body
    before it runs any dependency, so an unauthenticated caller could make it read anything."""
    return model.model_validate_json(await read_body(request, limit) or b"{}")


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI entry of a body read by ``_json_body`` (FastAPI only documents body parameters)."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _queue_families(plane: ControlPlane) -> Any:
    try:
        return metrics.families(await plane.queue_health())
    except SmithError:  # Redis down: the counters still go out, with smith_redis_up 0
        return metrics.families(None)


def create_app(
    settings: ControlSettings,
    *,
    credentials: RunnerCredentials | None = None,
    jobs: RedisJobs | None = None,
) -> FastAPI:
    """Build the app. Redis comes from ``settings.redis_url`` unless a job store is passed in."""
    if jobs is None:
        if not settings.redis_url:
            raise SmithError("SMITH_REDIS_URL is not set (smith dev starts an embedded Valkey and sets it)")
        # A write's reply may wait for replicas or the AOF on top of the usual time.
        waits = settings.redis_wait_timeout_ms / 1000 if settings.redis_durability != "local" else 0.0
        r = connect.client(settings.redis_url, socket_timeout=settings.redis_timeout_seconds + waits)
        jobs = RedisJobs(
            r,
            blocking=connect.client(
                settings.redis_url,
                max_connections=4096,
                socket_timeout=settings.lease_wait_max_seconds + settings.redis_timeout_seconds,
            ),
            retention_seconds=settings.job_retention_seconds,
            retention_max=settings.job_retention_max,
            delivery_ttl=settings.delivery_retention_seconds,
            unfinished_ttl=settings.job_unfinished_ttl_seconds,
            durability=Durability(
                settings.redis_durability, settings.redis_min_replicas, settings.redis_wait_timeout_ms
            ),
        )
    tracing.setup(settings, "control")  # nothing unless SMITH_OTEL_EXPORTER_ENDPOINT is set
    spool = Spool(settings.spool_dir) if settings.spool_dir else None
    plane = ControlPlane(settings, jobs, credentials, spool)
    webhook_secret = (
        settings.github_webhook_secret.get_secret_value().encode() if settings.github_webhook_secret else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        try:
            yield
        finally:
            await plane.stop()
            await app.state.console.aclose()
            await jobs.r.aclose()
            if jobs.blocking is not jobs.r:
                await jobs.blocking.aclose()

    app = FastAPI(title="Smith control plane", version="0.1.0", lifespan=lifespan, **api_docs(settings))
    app.state.plane = plane
    app.state.settings = settings

    add_error_handlers(app)

    # -- health -------------------------------------------------------------------------------------------

    async def redis_ready() -> dict[str, Any]:
        await connect.call(jobs.r.ping)
        return {"redis": "ok"}

    add_health_routes(app, redis_ready, "redis")
    add_metrics_route(app, settings.metrics_token, lambda: _queue_families(plane))

    # -- GitHub -------------------------------------------------------------------------------------------

    webhook_bodies = app.state.webhook_bodies = ByteBudget(
        settings.webhook_max_inflight_bytes, settings.webhook_wait_seconds
    )

    bucket = (
        TokenBucket(settings.webhook_rate_per_second, settings.webhook_burst)
        if settings.webhook_rate_per_second
        else None
    )

    async def github_webhook(request: Request) -> Response:
        if bucket is not None and (wait := bucket.take()):
            # Refused unread: the connection is closed rather than the body read to keep it alive.
            refused = error_response(RateLimited("too many webhook deliveries; retry later", retry_after=wait))
            refused.headers["Connection"] = "close"
            return refused
        # Everything the headers can refuse is refused before the body is read (413 on a Content-Length over
        # the limit, unread); the signature needs the body, read to at most the limit.
        signature = request.headers.get("x-hub-signature-256")
        if webhook_secret is None or not signature or not signature.startswith("sha256="):
            raise AuthError("missing or bad X-Hub-Signature-256")
        event = request.headers.get("x-github-event")
        delivery = request.headers.get("x-github-delivery")
        if not event or not delivery or len(delivery) > 100:
            raise InvalidInput("X-GitHub-Event and X-GitHub-Delivery headers are required")
        async with webhook_bodies.hold(request, settings.webhook_max_body_bytes):  # (forged ones too: bounded)
            try:
                async with asyncio.timeout(settings.webhook_body_timeout_seconds):
                    body = await read_body(request, settings.webhook_max_body_bytes)
            except TimeoutError:
                raise RequestTimeout("the webhook body did not arrive in time") from None
            if not tokens.verify_github_signature(webhook_secret, body, signature):
                raise AuthError("missing or bad X-Hub-Signature-256")
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"body is not valid JSON: {exc}") from exc
            del body
            if not isinstance(payload, dict):
                raise InvalidInput("body must be a JSON object")
            return json_response(await plane.receive(event, delivery, payload), 202)

    # A plain Starlette route: the hottest path skips FastAPI's per-request dependency and parameter machinery
    # (~15% of its CPU in a profile); it takes nothing but the raw request anyway.
    app.router.add_route("/webhooks/github", metrics.webhooks(github_webhook), methods=["POST"])

    # -- agents -------------------------------------------------------------------------------------------

    @app.post("/v1/agents/register", tags=["agents"], openapi_extra=_body_doc(wire.RegisterRequest))
    async def register(request: Request, agent: Agent) -> wire.RegisterResponse:
        body = await _json_body(request, wire.RegisterRequest, settings.agent_max_body_bytes)
        return await plane.register(agent, body)

    @app.post("/v1/agents/heartbeat", tags=["agents"], openapi_extra=_body_doc(wire.HeartbeatRequest))
    async def heartbeat(request: Request, agent: Agent) -> wire.HeartbeatResponse:
        body = await _json_body(request, wire.HeartbeatRequest, settings.agent_max_body_bytes)
        return await plane.heartbeat(agent, body)

    @app.post(
        "/v1/agents/lease",
        tags=["agents"],
        responses={204: {"description": "no job within the wait"}},
        openapi_extra=_body_doc(wire.LeaseRequest),
    )
    async def lease(request: Request, agent: Agent) -> Response:
        body = await _json_body(request, wire.LeaseRequest, settings.agent_max_body_bytes)
        task = asyncio.ensure_future(plane.lease(agent, body))
        try:
            # Stop waiting when the agent hangs up, so its lease is not handed to a closed connection.
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if not done and await request.is_disconnected():
                    return Response(status_code=499)
        finally:
            if not task.done():  # hung up, or this handler was cancelled (server shutting down)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SmithError):
                    await task
        got = task.result()
        if got is None:
            return Response(status_code=204)
        return Response(got.model_dump_json(), media_type="application/json")

    @app.post("/v1/agents/jobs/{job_id}/status", tags=["agents"], openapi_extra=_body_doc(wire.StatusReport))
    async def status(request: Request, job_id: str, agent: Agent) -> wire.JobView:
        body = await _json_body(request, wire.StatusReport, settings.agent_max_body_bytes)
        return await plane.report(agent, job_id, body)

    # -- operators ----------------------------------------------------------------------------------------

    @app.get("/v1/jobs", tags=["operators"])
    async def recent(
        _: Operator,
        state: str | None = None,
        repo: str | None = None,
        runner_class: str | None = None,
        since: float | None = Query(None, ge=0, allow_inf_nan=False, description="Unix time: jobs created after it"),
        limit: int = Query(50, ge=1, le=1000),
    ) -> list[wire.JobView]:
        found = await jobs.recent(limit=limit, state=state, repo=repo, runner_class=runner_class, since=since)
        return [job_view(j) for j in found]

    @app.post("/v1/jobs", status_code=201, tags=["operators"], openapi_extra=_body_doc(SubmitRequest))
    async def submit(request: Request, _: Operator) -> wire.JobView:
        body = await _json_body(request, SubmitRequest, settings.operator_max_body_bytes)
        return await plane.submit(body.run, body.labels, body.repo)

    @app.get("/v1/jobs/{job_id}", tags=["operators"])
    async def show(job_id: str, _: Operator) -> wire.JobView:
        return job_view(await jobs.get(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["operators"], openapi_extra=_body_doc(CancelRequest))
    async def cancel(request: Request, job_id: str, who: Operator) -> dict[str, Any]:
        body = await _json_body(request, CancelRequest, settings.operator_max_body_bytes)
        reason = body.reason + f" ({who})"
        outcome = await jobs.cancel(job_id, reason)
        return {"outcome": outcome, "job": job_view(await jobs.get(job_id)).model_dump()}

    @app.post("/v1/workflows/dispatch", status_code=201, tags=["operators"], openapi_extra=_body_doc(DispatchRequest))
    async def dispatch(request: Request, _: Operator) -> dict[str, Any]:
        body = await _json_body(request, DispatchRequest, settings.operator_max_body_bytes)
        return {"runs": await plane.workflows.dispatch(body.repository, body.workflow, body.ref, body.inputs)}

    @app.get("/v1/workflows/runs/{run_id}", tags=["operators"])
    async def workflow_run(run_id: str, _: Operator) -> dict[str, Any]:
        return await plane.workflows.view(run_id)

    @app.post("/v1/workflows/runs/{run_id}/cancel", tags=["operators"], openapi_extra=_body_doc(CancelRequest))
    async def workflow_cancel(request: Request, run_id: str, who: Operator) -> dict[str, Any]:
        body = await _json_body(request, CancelRequest, settings.operator_max_body_bytes)
        await wfrerun.cancel(plane.workflows, run_id, body.reason + f" ({who})")
        return await plane.workflows.view(run_id)

    @app.post("/v1/workflows/runs/{run_id}/rerun", status_code=201, tags=["operators"])
    async def workflow_rerun(run_id: str, _: Operator, failed_only: bool = False) -> dict[str, Any]:
        return await plane.workflows.view(await wfrerun.rerun(plane.workflows, run_id, failed_only))

    @app.get("/v1/workflows/triggers/{delivery}", tags=["operators"])
    async def workflow_trigger(delivery: str, _: Operator) -> dict[str, Any]:
        return await plane.workflows.trigger_view(delivery)

    @app.get("/v1/queue", tags=["operators"])
    async def queue(_: Operator) -> dict[str, Any]:
        return await plane.queue_health()

    app.state.console = console.mount(app, settings, plane, jobs)

    return app
