"""Request and response bodies of Firecracker's API, pinned to v1.16.1 (field names as in its swagger file).

Only what Smith sends is modelled. Optional fields default to ``None`` and are left out of the JSON
(``body()``), so Firecracker applies its own defaults; Firecracker rejects unknown fields, so are we
(``extra="forbid"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "1.16.1"


class FCModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class MachineConfiguration(FCModel):
    vcpu_count: int = Field(ge=1, le=32)
    mem_size_mib: int = Field(ge=1)
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    huge_pages: Literal["None", "2M"] | None = None


class BootSource(FCModel):
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


class Drive(FCModel):
    drive_id: str
    is_root_device: bool
    path_on_host: str | None = None
    is_read_only: bool | None = None
    partuuid: str | None = None
    cache_type: Literal["Unsafe", "Writeback"] | None = None
    io_engine: Literal["Sync", "Async"] | None = None


class NetworkInterface(FCModel):
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: int | None = Field(None, ge=68, le=65535)


class MmdsConfig(FCModel):
    network_interfaces: list[str]
    version: Literal["V1", "V2"] | None = None
    ipv4_address: str | None = None
    imds_compat: bool | None = None


class Vsock(FCModel):
    guest_cid: int = Field(ge=3)
    uds_path: str


LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]


class Logger(FCModel):
    log_path: str | None = None
    level: LogLevel | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None


class Metrics(FCModel):
    metrics_path: str


class InstanceActionInfo(FCModel):
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class Vm(FCModel):
    state: Literal["Paused", "Resumed"]


class SnapshotCreateParams(FCModel):
    snapshot_path: str
    mem_file_path: str
    snapshot_type: Literal["Full", "Diff"] | None = None


class MemoryBackend(FCModel):
    backend_type: Literal["File", "Uffd"]
    backend_path: str


class NetworkOverride(FCModel):
    iface_id: str
    host_dev_name: str


class VsockOverride(FCModel):
    uds_path: str


class SnapshotLoadParams(FCModel):
    snapshot_path: str
    mem_backend: MemoryBackend | None = None
    track_dirty_pages: bool | None = None
    resume_vm: bool | None = None
    network_overrides: list[NetworkOverride] | None = None
    vsock_override: VsockOverride | None = None


class InstanceInfo(BaseModel):
    """GET / (answers may grow fields in later versions, so extra fields are ignored here)."""

    app_name: str
    id: str
    state: Literal["Not started", "Running", "Paused"]
    vmm_version: str
