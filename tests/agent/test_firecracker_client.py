"""The Firecracker API client: every body it sends is valid per the v1.16.1 spec; errors keep Firecracker's words."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from smith.adapters.firecracker.client import (
    FirecrackerAPIError,
    FirecrackerClient,
    FirecrackerUnreachable,
    wait_for_socket,
)
from smith.adapters.firecracker.models import (
    BootSource,
    Drive,
    Logger,
    MachineConfiguration,
    MemoryBackend,
    Metrics,
    MmdsConfig,
    NetworkInterface,
    NetworkOverride,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vsock,
)
from smith.errors import SmithError, UpstreamError, VMError
from smith.testing.firecracker import FakeServer
from tests.agent.firecracker_support import load_spec

Call = Callable[[FirecrackerClient], Awaitable[Any]]

# One of each call the client can make, with every optional field Smith may set.
EVERY_CALL: dict[str, Call] = {
    "put_machine_config": lambda c: c.put_machine_config(
        MachineConfiguration(vcpu_count=2, mem_size_mib=1024, smt=False, track_dirty_pages=True, huge_pages="None")
    ),
    "put_boot_source": lambda c: c.put_boot_source(
        BootSource(kernel_image_path="/vmlinux", boot_args="console=ttyS0", initrd_path="/initrd")
    ),
    "put_drive": lambda c: c.put_drive(
        Drive(
            drive_id="rootfs",
            path_on_host="/rootfs.ext4",
            is_root_device=True,
            is_read_only=True,
            cache_type="Unsafe",
            io_engine="Sync",
        )
    ),
    "put_network_interface": lambda c: c.put_network_interface(
        NetworkInterface(iface_id="eth0", host_dev_name="fc0", guest_mac="06:00:ac:1e:00:02", mtu=1500)
    ),
    "put_mmds_config": lambda c: c.put_mmds_config(
        MmdsConfig(version="V2", network_interfaces=["eth0"], ipv4_address="169.254.169.254", imds_compat=False)
    ),
    "put_mmds": lambda c: c.put_mmds({"smith": {"config": {"job": {"id": "j"}}}}),
    "patch_mmds": lambda c: c.patch_mmds({"smith": {"config": None}}),
    "put_vsock": lambda c: c.put_vsock(Vsock(guest_cid=3, uds_path="/v.sock")),
    "put_logger": lambda c: c.put_logger(
        Logger(log_path="/fc.log", level="Warning", show_level=True, show_log_origin=False, module="vmm")
    ),
    "put_metrics": lambda c: c.put_metrics(Metrics(metrics_path="/metrics.json")),
    "start": lambda c: c.start(),
    "send_ctrl_alt_del": lambda c: c.send_ctrl_alt_del(),
    "pause": lambda c: c.pause(),
    "resume": lambda c: c.resume(),
    "create_snapshot": lambda c: c.create_snapshot(
        SnapshotCreateParams(snapshot_path="/s.vmstate", mem_file_path="/s.mem", snapshot_type="Full")
    ),
    "load_snapshot": lambda c: c.load_snapshot(
        SnapshotLoadParams(
            snapshot_path="/s.vmstate",
            mem_backend=MemoryBackend(backend_type="File", backend_path="/s.mem"),
            track_dirty_pages=False,
            resume_vm=True,
            network_overrides=[NetworkOverride(iface_id="eth0", host_dev_name="fc7")],
        )
    ),
    "describe_instance": lambda c: c.describe_instance(),
    "get_mmds": lambda c: c.get_mmds(),
}

INSTANCE = {"app_name": "Firecracker", "id": "x", "state": "Running", "vmm_version": "1.16.1"}


def spec_operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The swagger operation for a concrete path (templates like /drives/{drive_id} matched by hand)."""
    for template, ops in spec["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            assert method.lower() in ops, f"{method} {template} is not in Firecracker's API"
            op: dict[str, Any] = ops[method.lower()]
            return op
    raise AssertionError(f"{path} is not in Firecracker's API")


def strict(node: Any) -> Any:
    """Firecracker refuses unknown fields (serde deny_unknown_fields): close every object that lists properties."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


@pytest.mark.parametrize("name", sorted(EVERY_CALL))
async def test_every_request_body_validates_against_the_pinned_spec(name: str) -> None:
    spec = load_spec()
    assert spec["info"]["version"] == "1.16.1"
    definitions = strict(spec["definitions"])
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=INSTANCE)
        return httpx.Response(204)

    async with FirecrackerClient("/nonexistent", transport=httpx.MockTransport(answer)) as client:
        await EVERY_CALL[name](client)
    assert len(sent) == 1
    request = sent[0]
    op = spec_operation(spec, request.method, request.url.path)
    body_param = next((p for p in op.get("parameters", []) if p["in"] == "body"), None)
    if body_param is None:
        assert request.content == b""
        return
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    schema = {**body_param["schema"], "definitions": definitions}
    jsonschema.Draft4Validator(schema).validate(body)  # raises with the offending field
    for param in op["parameters"]:  # path ids agree with the body's (Firecracker checks that too)
        if param["in"] == "path":
            assert request.url.path.endswith("/" + body[param["name"]])


def test_all_client_calls_are_covered() -> None:
    public = {n for n in dir(FirecrackerClient) if not n.startswith("_") and n != "aclose"}
    assert public == set(EVERY_CALL)


async def test_fault_message_surfaces_in_our_error() -> None:
    fault = "Invalid request method and/or path: PUT /nope."
    transport = httpx.MockTransport(lambda _: httpx.Response(400, json={"fault_message": fault}))
    async with FirecrackerClient("/x", transport=transport) as client:
        with pytest.raises(FirecrackerAPIError) as info:
            await client.put_metrics(Metrics(metrics_path="/m"))
    err = info.value
    assert isinstance(err, UpstreamError)
    assert err.fault_message == fault and err.status == 400
    assert (err.method, err.path) == ("PUT", "/metrics")
    assert fault in str(err) and not err.retryable


async def test_non_json_error_body_is_kept() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(500, text="internal panic"))
    async with FirecrackerClient("/x", transport=transport) as client:
        with pytest.raises(FirecrackerAPIError, match="internal panic"):
            await client.start()


async def test_missing_socket_is_a_clear_retryable_error(tmp_path: Path) -> None:
    async with FirecrackerClient(tmp_path / "absent.sock") as client:
        with pytest.raises(FirecrackerUnreachable) as info:
            await client.describe_instance()
    assert info.value.retryable
    assert "absent.sock" in str(info.value)


async def test_socket_nobody_listens_on_is_unreachable(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: connect() is refused
        async with FirecrackerClient(path) as client:
            with pytest.raises(FirecrackerUnreachable):
                await client.start()


async def test_wait_for_socket_times_out_clearly(tmp_path: Path) -> None:
    with pytest.raises(FirecrackerUnreachable, match="not up after"):
        await wait_for_socket(tmp_path / "never.sock", within=0.2)


async def test_wait_for_socket_fails_fast_when_the_process_died(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    await proc.wait()
    with pytest.raises(VMError, match="exited with code 3"):
        await wait_for_socket(tmp_path / "never.sock", within=30, process=proc)


async def test_wait_for_socket_returns_once_the_api_answers(tmp_path: Path) -> None:
    sock = tmp_path / "fc.sock"

    async def late_start() -> FakeServer:
        await asyncio.sleep(0.05)
        server = FakeServer(sock)
        await server.start()
        return server

    task = asyncio.ensure_future(late_start())
    await wait_for_socket(sock, within=10)
    server = await task
    await server.close()


async def test_round_trip_over_a_real_unix_socket(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    rootfs = tmp_path / "rootfs"
    rootfs.write_bytes(b"")
    async with FakeServer(tmp_path / "fc.sock") as server, FirecrackerClient(tmp_path / "fc.sock") as client:
        assert (await client.describe_instance()).state == "Not started"
        await client.put_machine_config(MachineConfiguration(vcpu_count=1, mem_size_mib=128))
        await client.put_boot_source(BootSource(kernel_image_path=str(kernel)))
        await client.put_drive(Drive(drive_id="rootfs", path_on_host=str(rootfs), is_root_device=True))
        await client.put_mmds({"a": {"b": 1}})
        await client.start()
        await client.patch_mmds({"a": {"c": 2}})
        assert await client.get_mmds() == {"a": {"b": 1, "c": 2}}
        await client.pause()
        assert (await client.describe_instance()).state == "Paused"
        with pytest.raises(FirecrackerAPIError, match="not supported after starting"):
            await client.put_machine_config(MachineConfiguration(vcpu_count=2, mem_size_mib=128))
    assert [c.status for c in server.api.calls].count(400) == 1


def test_errors_are_smith_errors() -> None:
    assert issubclass(FirecrackerAPIError, SmithError)
    assert FirecrackerUnreachable("x").retryable
