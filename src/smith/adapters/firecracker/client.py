"""A thin async client for Firecracker's API (v1.16.1) over its Unix socket: one method per call.

Firecracker answers 204 (or 200 with a body for GETs) on success and 400 with ``{"fault_message": ...}``
on any refusal; those become :class:`FirecrackerAPIError` carrying the fault message. A socket that is not
there (yet) or refuses connections becomes :class:`FirecrackerUnreachable`, which is retryable: use
:func:`wait_for_socket` right after starting the process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from smith.adapters.firecracker.models import (
    BootSource,
    Drive,
    FCModel,
    InstanceActionInfo,
    InstanceInfo,
    Logger,
    MachineConfiguration,
    Metrics,
    MmdsConfig,
    NetworkInterface,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
    Vsock,
)
from smith.errors import Unavailable, UpstreamError, VMError


class FirecrackerAPIError(UpstreamError):
    """Firecracker refused a call; ``fault_message`` is its own explanation."""

    code = "firecracker"

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"firecracker {method} {path} -> {status}: {fault_message}", retryable=False)
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


class FirecrackerUnreachable(Unavailable):
    """The API socket is missing or nobody listens on it (the process is starting, or gone)."""

    code = "firecracker_unreachable"


class FirecrackerClient:
    """``async with FirecrackerClient(sock) as fc: await fc.put_machine_config(...)``"""

    def __init__(
        self, socket_path: str | Path, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.socket_path = str(socket_path)
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=self.socket_path),
            base_url="http://localhost",
            timeout=timeout,
            headers={"Accept": "application/json"},
        )

    async def __aenter__(self) -> FirecrackerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: FCModel | dict[str, Any] | None = None) -> httpx.Response:
        content = None
        headers = {}
        if body is not None:
            data = body.body() if isinstance(body, FCModel) else body
            content = orjson.dumps(data)
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, path, content=content, headers=headers)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise FirecrackerUnreachable(f"firecracker API socket {self.socket_path} is unreachable: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise FirecrackerUnreachable(f"firecracker {method} {path} timed out") from exc
        except httpx.HTTPError as exc:  # the process died mid-request, garbage on the socket...
            raise VMError(f"firecracker {method} {path} failed: {exc}", retryable=False) from exc
        if response.status_code >= 300:
            raise FirecrackerAPIError(method, path, response.status_code, _fault(response))
        return response

    # -- pre-boot configuration ---------------------------------------------------------------------------

    async def put_machine_config(self, config: MachineConfiguration) -> None:
        await self._call("PUT", "/machine-config", config)

    async def put_boot_source(self, boot: BootSource) -> None:
        await self._call("PUT", "/boot-source", boot)

    async def put_drive(self, drive: Drive) -> None:
        await self._call("PUT", f"/drives/{drive.drive_id}", drive)

    async def put_network_interface(self, iface: NetworkInterface) -> None:
        await self._call("PUT", f"/network-interfaces/{iface.iface_id}", iface)

    async def put_mmds_config(self, config: MmdsConfig) -> None:
        await self._call("PUT", "/mmds/config", config)

    async def put_vsock(self, vsock: Vsock) -> None:
        await self._call("PUT", "/vsock", vsock)

    async def put_logger(self, logger: Logger) -> None:
        await self._call("PUT", "/logger", logger)

    async def put_metrics(self, metrics: Metrics) -> None:
        await self._call("PUT", "/metrics", metrics)

    # -- MMDS data (before and after boot) ----------------------------------------------------------------

    async def put_mmds(self, data: dict[str, Any]) -> None:
        await self._call("PUT", "/mmds", data)

    async def patch_mmds(self, data: dict[str, Any]) -> None:
        await self._call("PATCH", "/mmds", data)

    async def get_mmds(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self._call("GET", "/mmds")).json()
        return result

    # -- actions and state --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._call("PUT", "/actions", InstanceActionInfo(action_type="InstanceStart"))

    async def send_ctrl_alt_del(self) -> None:
        await self._call("PUT", "/actions", InstanceActionInfo(action_type="SendCtrlAltDel"))

    async def pause(self) -> None:
        await self._call("PATCH", "/vm", Vm(state="Paused"))

    async def resume(self) -> None:
        await self._call("PATCH", "/vm", Vm(state="Resumed"))

    async def create_snapshot(self, params: SnapshotCreateParams) -> None:
        await self._call("PUT", "/snapshot/create", params)

    async def load_snapshot(self, params: SnapshotLoadParams) -> None:
        await self._call("PUT", "/snapshot/load", params)

    async def describe_instance(self) -> InstanceInfo:
        return InstanceInfo.model_validate_json((await self._call("GET", "/")).content)


def _fault(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
    fault = data.get("fault_message") if isinstance(data, dict) else None
    return fault if isinstance(fault, str) else response.text[:500]


async def wait_for_socket(
    socket_path: str | Path, *, within: float = 5.0, process: asyncio.subprocess.Process | None = None
) -> None:
    """Wait until Firecracker answers ``GET /`` on ``socket_path``.

    Fails fast with a VMError when ``process`` exits first, and with FirecrackerUnreachable after ``within`` s.
    """
    deadline = time.monotonic() + within
    delay = 0.005
    async with FirecrackerClient(socket_path, timeout=max(within, 0.5)) as client:
        while True:
            if process is not None and process.returncode is not None:
                raise VMError(f"firecracker exited with code {process.returncode} before its API socket was up")
            try:  # a missing socket and a socket nobody listens on both come back as FirecrackerUnreachable
                await client.describe_instance()
                return
            except FirecrackerUnreachable:
                pass
            if time.monotonic() >= deadline:
                raise FirecrackerUnreachable(f"firecracker API socket {socket_path} not up after {within:.1f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
