"""A fake Firecracker on a real Unix socket, checked against Firecracker's own API description (v1.16.1).

Every request is validated as Firecracker would: the method and path must exist in the spec; the body must
validate against the operation's schema (``#/definitions/...`` resolved, unknown fields refused as serde's
``deny_unknown_fields`` does); pre-boot-only calls are refused after InstanceStart, post-boot-only ones before
it; a snapshot loads only into a fresh process; files named in bodies (kernel, drives, log, metrics) must
exist. Refusals are ``400 {"fault_message": ...}``; successes 204, GETs 200. Every call is recorded.

Run it in place of the firecracker binary::

    python -m smith.testing.firecracker --api-sock /tmp/fc.sock [--record calls.jsonl] [--fail 'PUT /drives/scratch']

It also plays the guest (``smith.testing.fcguest``): it boots only what the real kernel could boot, reaches MMDS
only with the addresses the image's init reads from the command line, runs Smith's guest agent on the config MMDS
holds, forwards its output to a non-blocking stdout (the serial console) that drops what nobody reads, lets the
guest agent reach ``<uds_path>_<port>`` when a vsock device is configured (``--guest-vsock no``: a guest kernel
without vsock), and exits only as the real one does (the guest rebooting with ``reboot=k``; a ``poweroff`` leaves
it running). Network interfaces need their tap in the process's network namespace (``--taps check``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from smith.testing.fcguest import Console, Guest
from smith.testing.openapi import strict

VERSION = "1.16.1"
SPEC_NAME = f"firecracker-api-v{VERSION}.yaml"
SPECS = Path(__file__).resolve().parent / "specs"  # shipped with smith.testing; origin and licence in its README

MAX_PAYLOAD = 51200  # --http-api-max-payload-size default
NOT_AFTER_START = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_START = "The requested operation is not supported before starting the microVM."

# What Firecracker accepts only before InstanceStart, and only after (its pre-boot and runtime API controllers).
PRE_BOOT = {
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/mmds/config"),
    ("PUT", "/vsock"),
    ("PUT", "/balloon"),
    ("PUT", "/cpu-config"),
    ("PUT", "/entropy"),
    ("PUT", "/pmem/{id}"),
    ("PUT", "/serial"),
    ("PUT", "/hotplug/memory"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/snapshot/load"),
}
POST_BOOT = {
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PATCH", "/drives/{drive_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PATCH", "/pmem/{id}"),
    ("PATCH", "/hotplug/memory"),
}
# Configuring any of these makes a later snapshot load impossible (only logger and metrics may come first).
BOOT_SPECIFIC = PRE_BOOT - {("PUT", "/logger"), ("PUT", "/metrics"), ("PUT", "/snapshot/load")}


def default_spec_path() -> Path:
    """Firecracker's API description of the pinned release, shipped in ``smith/testing/specs``."""
    return SPECS / SPEC_NAME


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    schema: dict[str, Any] | None
    body_required: bool


class Spec:
    """Firecracker's swagger file: which operations exist and the JSON schema of each one's body."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_spec_path()
        if not self.path.exists():
            raise FileNotFoundError(f"Firecracker API spec {self.path} not found")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C safe loader: 10x faster, still safe
        doc = yaml.load(self.path.read_text(), Loader=loader)  # noqa: S506
        self.version = str(doc["info"]["version"])
        self.definitions = strict(doc["definitions"])
        self.operations: dict[tuple[str, str], Operation] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template, methods in doc["paths"].items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template)) + "$"
            self._patterns.append((re.compile(regex), template))
            for method, op in methods.items():
                body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
                self.operations[(method.upper(), template)] = Operation(
                    method.upper(),
                    template,
                    body["schema"] if body else None,
                    bool(body and body.get("required")),
                )

    def match(self, method: str, path: str) -> tuple[Operation | None, list[str]]:
        """The operation for ``method path`` (None if the path or method is unknown) and its path params."""
        for pattern, template in self._patterns:
            m = pattern.match(path)
            if m:
                return self.operations.get((method, template)), list(m.groups())
        return None, []

    def errors(self, schema: dict[str, Any], body: Any) -> list[str]:
        """Schema violations of ``body`` (empty when valid)."""
        validator = jsonschema.Draft4Validator({**schema, "definitions": self.definitions})
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<body>'}: {e.message}"
            for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        ]


class Refused(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Call:
    method: str
    path: str
    status: int
    body: Any = None

    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


@dataclass
class FakeFirecracker:
    """The API's state machine, without I/O of its own (except checking that named files exist)."""

    spec: Spec
    instance_id: str = "anonymous-instance"
    fail: dict[tuple[str, str], str] = field(default_factory=dict)  # injected refusals
    state: str = "Not started"
    config: dict[str, Any] = field(default_factory=dict)
    drives: dict[str, dict[str, Any]] = field(default_factory=dict)
    ifaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    mmds: dict[str, Any] | None = None
    configured: set[tuple[str, str]] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    record: Path | None = None
    on_change: Any = None  # callable(event: str) for the guest emulator
    chroot: Path | None = None  # set when "jailed": paths in bodies are relative to this root
    check_taps: bool = False  # --taps check: a tap must exist in this network namespace (as Firecracker opens it)
    max_payload: int = MAX_PAYLOAD  # --http-api-max-payload-size
    mmds_limit: int = MAX_PAYLOAD  # --mmds-size-limit
    _flushes: int = 0

    @property
    def started(self) -> bool:
        return self.state != "Not started"

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        body: Any = None
        try:
            if len(raw) > self.max_payload:
                raise Refused(
                    f"Request payload with size {len(raw)} is larger than the limit of {self.max_payload} "
                    "allowed by server."
                )
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise Refused(f"An error occurred when deserializing the json body of a request: {exc}") from exc
            result = self._dispatch(method, path, body)
            status, answer = (200, result) if method == "GET" else (204, None)
        except Refused as exc:
            status, answer = exc.status, {"fault_message": exc.message}
        call = Call(method, path, status, body)
        self.calls.append(call)
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps({"method": method, "path": path, "status": status, "body": body}) + "\n")
        return status, answer

    def _dispatch(self, method: str, path: str, body: Any) -> Any:
        op, params = self.spec.match(method, path)
        if op is None:
            raise Refused(f"Invalid request method and/or path: {method} {path}.")
        if (method, path) in self.fail:
            raise Refused(self.fail[(method, path)])
        key = (method, op.template)
        if op.schema is not None:
            if body is None:
                if op.body_required:
                    raise Refused(f"Empty {method} request.")
            else:
                problems = self.spec.errors(op.schema, body)
                if problems:
                    raise Refused(
                        "An error occurred when deserializing the json body of a request: " + "; ".join(problems)
                    )
        if key in PRE_BOOT and self.started:
            raise Refused(NOT_AFTER_START)
        if key in POST_BOOT and not self.started:
            raise Refused(NOT_BEFORE_START)
        template = re.sub(r"\{[^}]+\}", "", op.template)  # /drives/{drive_id} -> _put_drives
        handler = getattr(self, "_" + re.sub(r"[^a-z]+", "_", f"{method} {template}".lower()).strip("_"), None)
        result = handler(body, *params) if handler else None
        if key in BOOT_SPECIFIC:
            self.configured.add(key)
        return result

    # -- handlers (named after method and path) -----------------------------------------------------------

    def _get(self, _: Any) -> dict[str, Any]:
        return {"app_name": "Firecracker", "id": self.instance_id, "state": self.state, "vmm_version": VERSION}

    def _get_version(self, _: Any) -> dict[str, Any]:
        return {"firecracker_version": VERSION}

    def _get_machine_config(self, _: Any) -> dict[str, Any]:
        return dict(self.config.get("machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "smt": False}))

    def _get_vm_config(self, _: Any) -> dict[str, Any]:
        return {
            "boot-source": self.config.get("boot-source"),
            "machine-config": self._get_machine_config(None),
            "drives": list(self.drives.values()),
            "network-interfaces": list(self.ifaces.values()),
            "mmds-config": self.config.get("mmds-config"),
            "vsock": self.config.get("vsock"),
        }

    def _put_machine_config(self, body: Any) -> None:
        body = body or {}
        if body.get("smt") and body["vcpu_count"] > 1 and body["vcpu_count"] % 2:
            raise Refused(
                "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."
            )
        if body.get("huge_pages") == "2M" and body["mem_size_mib"] % 2:
            raise Refused("Memory size must be a multiple of 2 MiB when using 2M huge pages.")
        self.config["machine-config"] = body

    def _put_boot_source(self, body: Any) -> None:
        self._must_exist(body["kernel_image_path"], "Cannot open kernel image")
        if body.get("initrd_path"):
            self._must_exist(body["initrd_path"], "Cannot open initrd file")
        self.config["boot-source"] = body

    def _put_drives(self, body: Any, drive_id: str) -> None:
        _checked_id(drive_id)
        if body["drive_id"] != drive_id:
            raise Refused(_id_mismatch(drive_id, body["drive_id"]))
        if "path_on_host" in body:
            self._must_exist(body["path_on_host"], "Unable to create the virtio block device")
            self._open_drive(body["path_on_host"], bool(body.get("is_read_only")))
        if body["is_root_device"] and any(d["is_root_device"] for i, d in self.drives.items() if i != drive_id):
            raise Refused("A root block device already exists!")
        self.drives[drive_id] = body

    def _open_drive(self, path: str, read_only: bool) -> None:
        """Firecracker opens the backing file when the drive is PUT: read-only, or for reading and writing (a file
        the jailed process may not write is refused then, not when the guest first writes)."""
        try:
            fd = os.open(self._host(path), os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as exc:
            raise Refused(
                f'Unable to create the virtio block device: VirtioBackend(BackingFile({exc}, "{path}"))'
            ) from exc
        os.close(fd)

    def _put_network_interfaces(self, body: Any, iface_id: str) -> None:
        _checked_id(iface_id)
        if body["iface_id"] != iface_id:
            raise Refused(_id_mismatch(iface_id, body["iface_id"]))
        for other in self.ifaces.values():
            if other["iface_id"] != iface_id and other["host_dev_name"] == body["host_dev_name"]:
                raise Refused(f"Could not create the network device: {body['host_dev_name']} is already in use")
        if self.check_taps:
            try:
                socket.if_nametoindex(body["host_dev_name"])
            except OSError as exc:
                raise Refused(
                    "Could not create the network device: Open tap device failed: Error while creating ifreq "
                    f"structure: {exc}. Invalid TUN/TAP Backend provided by {body['host_dev_name']}. Check our "
                    "documentation on setting up the network devices."
                ) from exc
        self.ifaces[iface_id] = body

    def _put_mmds_config(self, body: Any) -> None:
        ids = body["network_interfaces"]
        if not ids:
            raise Refused("The list of network interface IDs that allow forwarding MMDS requests is empty.")
        if any(i not in self.ifaces for i in ids):
            raise Refused(
                "The list of network interface IDs provided contains at least one ID that does not correspond "
                "to any existing network interface."
            )
        self.config["mmds-config"] = body

    def _put_vsock(self, body: Any) -> None:
        self._bind_vsock(body["uds_path"])
        self.config["vsock"] = body

    def _bind_vsock(self, uds_path: str) -> None:
        """Firecracker binds and listens on ``uds_path`` itself (host-initiated connections); jailed, the path
        is inside the chroot (an absolute host path then names a directory the chroot does not have)."""
        uds = self._host(uds_path)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(uds))
        except OSError as exc:
            raise Refused(
                f"Cannot create backend for vsock device: Error binding to the host-side Unix socket: {exc}"
            ) from exc

    def _put_logger(self, body: Any) -> None:
        if body.get("log_path"):
            self._must_exist(body["log_path"], "Failed to open the log file")
        self.config["logger"] = body
        self._log(f"Running Firecracker v{VERSION}")

    def _put_metrics(self, body: Any) -> None:
        if "metrics" in self.config:
            raise Refused("Reinitialization of metrics not allowed.")
        self._must_exist(body["metrics_path"], "Failed to open the metrics file")
        self.config["metrics"] = body

    def _put_mmds(self, body: Any) -> None:
        self._set_mmds(body if body is not None else {})

    def _patch_mmds(self, body: Any) -> None:
        if self.mmds is None:
            raise Refused("The MMDS data store is not initialized.")
        self._set_mmds(_merge_patch(self.mmds, body or {}))

    def _set_mmds(self, data: Any) -> None:
        if len(json.dumps(data)) > self.mmds_limit:
            raise Refused(f"The MMDS patch request doesn't fit: the data store limit is {self.mmds_limit} bytes.")
        self.mmds = data
        self._changed("mmds")

    def _get_mmds(self, _: Any) -> Any:
        if self.mmds is None:
            raise Refused("The MMDS data store is not initialized.", status=404)
        return self.mmds

    def _put_actions(self, body: Any) -> None:
        action = body["action_type"]
        if action == "InstanceStart":
            if self.started:
                raise Refused(NOT_AFTER_START)
            if "boot-source" not in self.config:
                raise Refused("Cannot start microvm without kernel configuration.")
            if not any(d["is_root_device"] for d in self.drives.values()) and not self.config["boot-source"].get(
                "initrd_path"
            ):
                raise Refused("Cannot start microvm without a root device or an initrd.")
            self.state = "Running"
            self._log("Successfully started microvm that was configured from the API")
            self._flush_metrics()
            self._changed("start")
        elif action in ("SendCtrlAltDel", "FlushMetrics"):
            if not self.started:
                raise Refused(NOT_BEFORE_START)
            self._flush_metrics()
            if action == "SendCtrlAltDel":
                self._log("Sending CTRL+ALT+DEL to the guest")
                self._changed("ctrl-alt-del")

    def _patch_vm(self, body: Any) -> None:
        self.state = "Paused" if body["state"] == "Paused" else "Running"
        self._changed(self.state.lower())

    def _put_snapshot_create(self, body: Any) -> None:
        if self.state != "Paused":
            raise Refused("Cannot create a snapshot: the microVM must be paused first.")
        for name in ("snapshot_path", "mem_file_path"):
            if not self._host(body[name]).parent.is_dir():
                raise Refused(f"Cannot create snapshot file {body[name]}: No such file or directory (os error 2)")
        state = {
            "firecracker_version": VERSION,
            "config": self.config,
            "drives": self.drives,
            "ifaces": self.ifaces,
            "mem_mib": self._get_machine_config(None)["mem_size_mib"],
        }
        self._host(body["snapshot_path"]).write_text(json.dumps(state))
        self._host(body["mem_file_path"]).write_bytes(b"\0" * 4096)

    def _put_snapshot_load(self, body: Any) -> None:
        if self.configured:
            raise Refused("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
        if ("mem_backend" in body) == ("mem_file_path" in body):
            raise Refused("Exactly one of mem_backend and mem_file_path must be given.")
        mem = body["mem_backend"]["backend_path"] if "mem_backend" in body else body["mem_file_path"]
        self._must_exist(mem, "Cannot open the memory file")
        try:
            saved = json.loads(self._host(body["snapshot_path"]).read_text())
        except (OSError, ValueError) as exc:
            raise Refused(f"Cannot load the microVM state: {exc}") from exc
        self.config.update(saved["config"])
        self.drives = saved["drives"]
        self.ifaces = saved["ifaces"]
        if "vsock_override" in body and "vsock" in self.config:
            self.config["vsock"] = {**self.config["vsock"], "uds_path": body["vsock_override"]["uds_path"]}
        if "vsock" in self.config:  # restored: Firecracker binds the device's socket again (an existing file: refused)
            self._bind_vsock(self.config["vsock"]["uds_path"])
        for override in body.get("network_overrides", []):
            if override["iface_id"] not in self.ifaces:
                raise Refused(f"Invalid network override: unknown interface {override['iface_id']}")
            self.ifaces[override["iface_id"]]["host_dev_name"] = override["host_dev_name"]
        self.state = "Running" if body.get("resume_vm") else "Paused"
        self._changed(self.state.lower())

    def _host(self, path: str) -> Path:
        """A path as the (possibly jailed) process sees it, on the host: under the chroot when there is one
        (where ``..`` stops at the root, as in a real chroot)."""
        if self.chroot is None:
            return Path(path)
        return self.chroot / os.path.normpath("/" + path).lstrip("/")

    def _must_exist(self, path: str, what: str) -> None:
        if not self._host(path).exists():
            raise Refused(f"{what} {path}: No such file or directory (os error 2)")

    def _log(self, message: str) -> None:
        """Append a line to the log file, shaped as Firecracker's (``<time> [<instance>:<thread>:<level>] msg``)."""
        path = self.config.get("logger", {}).get("log_path")
        if path:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
            with contextlib.suppress(OSError), self._host(path).open("a") as f:
                f.write(f"{stamp} [{self.instance_id}:main:INFO] {message}\n")

    def _flush_metrics(self) -> None:
        """One JSON line of counters, as Firecracker writes at each flush (every 60 s and on FlushMetrics)."""
        path = self.config.get("metrics", {}).get("metrics_path")
        if path:
            self._flushes += 1
            line = {"utc_timestamp_ms": int(time.time() * 1000), "api_server": {"flushes": self._flushes}}
            with contextlib.suppress(OSError), self._host(path).open("a") as f:
                f.write(json.dumps(line) + "\n")

    def _changed(self, event: str) -> None:
        if self.on_change is not None:
            self.on_change(event)


def _checked_id(resource_id: str) -> None:
    """Firecracker's ``checked_id``: a drive's or an interface's id in the path."""
    if not resource_id:
        raise Refused("The ID cannot be empty.")
    if not all(c == "_" or c.isalnum() for c in resource_id):
        raise Refused("API Resource IDs can only contain alphanumeric characters and underscores.")


def _id_mismatch(in_path: str, in_body: str) -> str:
    return f"The id from the path [{in_path}] does not match the id from the body [{in_body}]!"


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch, as PATCH /mmds applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


# -- HTTP over the Unix socket ----------------------------------------------------------------------------

REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}


async def serve_connection(api: FakeFirecracker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive, enough for httpx and curl."""
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, target, _ = request_line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            raw = await reader.readexactly(length) if length else b""
            status, answer = api.handle(method.upper(), target.split("?", 1)[0], raw)
            payload = b"" if answer is None else json.dumps(answer).encode()
            head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: Firecracker API\r\n"
            if payload:
                head += "Content-Type: application/json\r\n"
            head += f"Content-Length: {len(payload)}\r\n\r\n"
            writer.write(head.encode() + payload)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


class FakeServer:
    """``async with FakeServer(sock) as server: ... server.api.calls``: the fake in this event loop."""

    def __init__(self, socket_path: str | Path, api: FakeFirecracker | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.api = api or FakeFirecracker(Spec())
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            lambda r, w: serve_connection(self.api, r, w), path=str(self.socket_path)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- the guest: smith.testing.fcguest ---------------------------------------------------------------------


async def run_binary(args: argparse.Namespace) -> int:
    fail = {}
    for item in args.fail:
        call, _, message = item.partition("=")
        method, _, path = call.partition(" ")
        fail[(method.upper(), path)] = message or "injected failure"
    api = FakeFirecracker(Spec(Path(args.spec) if args.spec else None), instance_id=args.id, fail=fail)
    api.chroot = Path(args.chroot) if args.chroot else None
    api.max_payload = args.http_api_max_payload_size
    api.mmds_limit = args.mmds_size_limit or args.http_api_max_payload_size
    if args.record:
        api.record = Path(args.record)
    elif args.record_dir:
        api.record = Path(args.record_dir) / f"{args.id}.jsonl"
    api.check_taps = args.taps == "check"
    done = asyncio.Event()
    guest = Guest(api, done, vsock=args.guest_vsock == "yes", whole_process=True) if not args.no_guest else None
    if guest is None:  # an idle guest: it says it is ready and reboots on Ctrl+Alt+Del (reboot=k), nothing more
        console = Console()

        def idle(event: str) -> None:
            if event == "start":
                console.write(b'{"smith": "ready"}\n')
            if event == "ctrl-alt-del":
                done.set()

        api.on_change = idle
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    server = FakeServer(args.api_sock, api)
    try:
        await server.start()
        await done.wait()
        await asyncio.sleep(0.05)  # let the last answer and console lines out
    finally:
        await server.close()
        if guest is not None:
            guest.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A fake Firecracker for tests: spec-checked API, emulated guest")
    ap.add_argument("--api-sock", default="/run/firecracker.socket")
    ap.add_argument("--id", default="anonymous-instance")
    ap.add_argument("--spec", help=f"Firecracker's swagger file (default: smith/testing/specs/{SPEC_NAME})")
    ap.add_argument("--record", help="Append every call as a JSON line to this file")
    ap.add_argument("--record-dir", help="Record into <dir>/<id>.jsonl")
    ap.add_argument("--fail", action="append", default=[], help="'METHOD /path[=message]': refuse this call")
    ap.add_argument("--no-guest", action="store_true", help="Do not emulate the guest")
    ap.add_argument("--http-api-max-payload-size", type=int, default=MAX_PAYLOAD)
    ap.add_argument("--mmds-size-limit", type=int, default=0, help="Default: the API payload limit")
    ap.add_argument(
        "--taps",
        choices=["check", "ignore"],
        default="check",
        help="check (as Firecracker): a network interface's tap must exist in this process's network namespace; "
        "ignore: for tests on an in-memory network that makes no devices",
    )
    ap.add_argument(
        "--guest-vsock",
        choices=["yes", "no"],
        default="yes",
        help="yes: the guest kernel has vsock (the guest agent connects to <uds_path>_<port> when a vsock device is "
        "configured); no: it has not (events stay on the console)",
    )
    ap.add_argument("--chroot", help="Act as if chrooted here (set by the fake jailer): body paths are under it")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["jailer"]:
        return jailer_main(argv[1:])
    args, _unknown = ap.parse_known_args(argv)  # real firecracker flags (--level, --seccomp-filter...) ignored
    return asyncio.run(run_binary(args))


def jailer_main(argv: list[str]) -> int:
    """A stand-in jailer: checks its arguments as the jailer does, records them, drops to --uid/--gid and execs
    --exec-file with the arguments after ``--``, telling it (``--chroot``) where its root would be.

    Like the jailer it resolves --exec-file (a symlink's target names the chroot), refuses a chroot base on a
    noexec or nodev mount, joins --netns and (as root) makes the VM's cgroup directory in the first cgroup2
    mount. It does not chroot (the fake is a Python program that needs the host's files) or write cgroup values.
    """
    ap = argparse.ArgumentParser(prog="jailer", description="fake jailer")
    ap.add_argument("--id", required=True)
    ap.add_argument("--exec-file", required=True)
    ap.add_argument("--uid", type=int, required=True)
    ap.add_argument("--gid", type=int, required=True)
    ap.add_argument("--chroot-base-dir", default="/srv/jailer")
    ap.add_argument("--netns", default="")
    ap.add_argument("--cgroup-version", default="1", choices=["1", "2"])
    ap.add_argument("--cgroup", action="append", default=[])
    ap.add_argument("--parent-cgroup", default="")
    ap.add_argument("--resource-limit", action="append", default=[])
    ap.add_argument("--daemonize", action="store_true")
    ap.add_argument("--new-pid-ns", action="store_true")
    ap.add_argument("--record-dir", default="")
    rest: list[str] = []
    if "--" in argv:
        argv, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = ap.parse_args(argv)
    exec_file = Path(args.exec_file).resolve()  # as the jailer: the canonical path names the chroot and cgroup
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", args.id):
        problems.append(f"Invalid instance ID: {args.id}")
    if not exec_file.is_file() or "firecracker" not in exec_file.name:
        problems.append(f"Invalid exec file: {exec_file}")
    if not Path(args.chroot_base_dir).is_dir():
        problems.append(f"Invalid chroot base dir: {args.chroot_base_dir}")
    else:
        problems += mount_problems(Path(args.chroot_base_dir))
    for item in args.cgroup:
        if not re.fullmatch(r"[a-z_]+\.[a-z_.]+=.+", item):
            problems.append(f"Invalid cgroup: {item}")
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return 1
    root = Path(args.chroot_base_dir) / exec_file.name / args.id / "root"
    root.mkdir(parents=True, exist_ok=True)
    try:
        _join_netns(args.netns)
    except OSError as exc:
        sys.stderr.write(f"Failed to join network namespace {args.netns}: {exc}\n")
        return 1
    _make_cgroup(args, exec_file.name)
    if args.record_dir:
        (Path(args.record_dir) / f"{args.id}.jailer.json").write_text(json.dumps({"argv": argv, "rest": rest}))
    api_sock = "/run/firecracker.socket"
    if "--api-sock" in rest:
        api_sock = rest[rest.index("--api-sock") + 1]
    if os.geteuid() == 0:  # as the real jailer: Firecracker never runs as root
        os.setgroups([])
        os.setgid(args.gid)
        os.setuid(args.uid)
    host_sock = str(root / api_sock.lstrip("/"))
    child = [str(exec_file), *rest, "--id", args.id, "--chroot", str(root), "--api-sock", host_sock]
    os.execv(child[0], child)  # noqa: S606
    return 1  # not reached


def mount_problems(base: Path) -> list[str]:
    """The jailer copies Firecracker into the chroot and execs it there, and makes /dev/kvm and /dev/net/tun
    nodes in it: neither works on a noexec or nodev mount."""
    flags = os.statvfs(base).f_flag
    problems = []
    if flags & os.ST_NOEXEC:
        problems.append("Failed to exec into Firecracker: Permission denied (os error 13)")
    if flags & os.ST_NODEV:
        problems.append(f"Failed to open {base}/.../dev/kvm: Permission denied (os error 13)")
    return problems


def _join_netns(netns: str) -> None:
    """setns(2) into ``netns`` as the jailer does (root only), so the tap is looked up there."""
    if not netns:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def first_cgroup2_mount() -> Path | None:
    """The first cgroup2 mount in /proc/mounts: where the jailer makes its cgroups."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def _make_cgroup(args: argparse.Namespace, exec_name: str) -> None:
    """As root with --cgroup-version 2: the VM's cgroup directory where the jailer makes it (values not written)."""
    mount = first_cgroup2_mount()
    if args.cgroup_version != "2" or os.geteuid() != 0 or mount is None:
        return
    with contextlib.suppress(OSError):
        (mount / (args.parent_cgroup or exec_name) / args.id).mkdir(parents=True, exist_ok=True)


def write_stand_in(path: Path, *args: str, jailer: bool = False) -> Path:
    """An executable ``path`` that runs this fake (with ``args``) wherever a firecracker binary is expected.

    ``jailer=True``: the fake jailer instead (its ``args`` go before the jailer's own).
    """
    quoted = " ".join(f"'{a}'" for a in (("jailer", *args) if jailer else args))
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m smith.testing.firecracker {quoted} "$@"\n')
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
