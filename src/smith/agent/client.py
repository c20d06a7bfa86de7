"""The agent's side of the agent API: one method per endpoint, retrying what can be retried."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from smith.errors import AuthError, Conflict, NotFound, SmithError, Unavailable, UpstreamError
from smith.logging import get_logger
from smith.retry import RetryPolicy, retry_after
from smith.wire import agent as wire

log = get_logger("smith.agent.client")


def _error(resp: httpx.Response) -> SmithError:
    try:
        body = resp.json()
        message = str(body.get("message") or body)
    except ValueError:
        message = resp.text[:500]
    wait = retry_after(resp.headers.get("retry-after"), time.time())
    if resp.status_code in (401, 403):
        return AuthError(f"control plane refused the agent token: {message}")
    if resp.status_code == 404:
        return NotFound(message)
    if resp.status_code == 409:
        return Conflict(message)
    if resp.status_code >= 500 or resp.status_code == 429:
        return Unavailable(f"control plane {resp.status_code}: {message}", retry_after=wait)
    return UpstreamError(f"control plane {resp.status_code}: {message}")


class ControlClient:
    def __init__(self, url: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            timeout=httpx.Timeout(10.0, read=90.0),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: Any, *, attempts: int = 5) -> httpx.Response:
        backoff = RetryPolicy(attempts - 1, base=0.4, max=10.0, jitter=0.5)
        for attempt in range(1, attempts + 1):
            try:
                resp = await self.http.post(path, json=body)
            except httpx.TransportError as exc:
                err: SmithError = Unavailable(f"control plane unreachable: {type(exc).__name__}")
            else:
                if resp.status_code < 400:
                    return resp
                err = _error(resp)
            if not err.retryable or attempt == attempts:
                raise err
            wait = backoff.wait(attempt, err.retry_after)
            log.info(
                "control plane call failed; retrying",
                path=path,
                attempt=attempt,
                wait=round(wait, 2),
                error=err.message,
            )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def register(self, req: wire.RegisterRequest) -> wire.RegisterResponse:
        resp = await self._post("/v1/agents/register", req.model_dump(), attempts=10)
        return wire.RegisterResponse.model_validate(resp.json())

    async def heartbeat(self, req: wire.HeartbeatRequest) -> wire.HeartbeatResponse:
        resp = await self._post("/v1/agents/heartbeat", req.model_dump(), attempts=2)
        return wire.HeartbeatResponse.model_validate(resp.json())

    async def lease(self, req: wire.LeaseRequest) -> wire.LeaseResponse | None:
        resp = await self._post("/v1/agents/lease", req.model_dump(), attempts=1)
        if resp.status_code == 204:
            return None
        return wire.LeaseResponse.model_validate(resp.json())

    async def report(self, job_id: str, report: wire.StatusReport) -> None:
        await self._post(f"/v1/agents/jobs/{job_id}/status", report.model_dump(), attempts=8)
