"""Host agent settings (``SMITH_AGENT_*`` and shared ``SMITH_*``)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from smith.domain.jobs import check_agent_id
from smith.domain.network import DENY_BY_DEFAULT
from smith.settings import DOWNLOAD_HOST, CommonSettings, Port


def _total_memory_mib() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 / 1024)
    except (ValueError, OSError):
        return 4096


class AgentSettings(CommonSettings):
    control_url: str = Field("http://127.0.0.1:8080", description="The control plane's URL")
    agent_token: SecretStr | None = Field(None, description="Bearer token: `smith auth agent-token`")
    agent_id: str = Field(default_factory=socket.gethostname, description="Must match the token's agent_id")
    agent_backend: Literal["auto", "firecracker", "qemu", "sandbox"] = Field(
        "auto", description="auto picks the best this machine has: `smith agent backends`"
    )
    agent_vcpus: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0, description="vCPUs to hand out")
    agent_memory_mib: int = Field(
        default_factory=lambda: max(512, _total_memory_mib() - 1024), gt=0, description="Memory to hand out"
    )
    agent_max_vms: int = Field(16, gt=0, description="At most this many VMs at once (warm ones included)")
    agent_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Runner classes served; empty: all that fit"
    )
    agent_warm_pool: dict[str, int] = Field(
        default_factory=dict, description='Warm VMs per runner class, JSON: {"smith-2vcpu": 2}'
    )
    agent_drain_seconds: float = Field(300.0, ge=0, description="SIGTERM: how long running jobs may finish")
    agent_job_timeout_seconds: float = Field(6 * 3600.0, gt=0, description="A job running longer is stopped")
    agent_lease_wait_seconds: float = Field(20.0, gt=0, le=60)
    agent_work_dir: Path | None = Field(None, description="Per-VM files; default <data_dir>/agent")
    agent_runner_dir: str = Field("/opt/actions-runner", description="Where GitHub's runner lives in the image")
    agent_runner_idle_seconds: float = Field(
        900.0, gt=0, description="A GitHub runner that GitHub gives no job within this time is stopped (and removed)"
    )
    logs_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SMITH_AGENT_LOGS_URL", "SMITH_LOGS_URL"),
        description="Log pipeline URL; overrides what the control plane hands out",
    )
    cache_url: str | None = Field(None, description="Cache server given to jobs whose lease carries none")
    cache_download_host: str | None = Field(
        None, pattern=DOWNLOAD_HOST, description="With the fallback cache: the cache's SMITH_CACHE_DOWNLOAD_HOST"
    )
    cache_token_secret: SecretStr | None = Field(
        None, description="Fallback cache tokens: minted per job with this secret (the cache's shared secret)"
    )
    cache_token_value: SecretStr | None = Field(
        None, description="Fallback cache token used as is for every job (when no SMITH_CACHE_TOKEN_SECRET)"
    )
    agent_metrics_port: Port | None = Field(None, description="Serve the agent's /metrics on this port (unset: off)")
    agent_metrics_host: str = Field("127.0.0.1", description="Address the agent's /metrics listens on")
    agent_log_spool_max_bytes: int = Field(
        0, ge=0, description="Most bytes of job logs spooled for the pipeline (0: no limit besides free space)"
    )
    agent_log_spool_min_free_bytes: int = Field(
        1 << 30, ge=0, description="Stop spooling job logs when the disk has less free than this (a marker says so)"
    )
    agent_job_log_max_bytes: int = Field(64 << 20, gt=0, description="Most bytes of one job's log kept on this host")
    agent_job_logs_max_bytes: int = Field(
        1 << 30, gt=0, description="Most bytes of job logs kept on this host; the oldest go first"
    )
    agent_disk_mib: int | None = Field(
        None,
        ge=0,
        description="Disk (MiB) for VMs' scratch space; default: free space at start less the reserve; 0: not counted",
    )
    agent_disk_reserve_mib: int = Field(4096, ge=0, description="Disk kept free for images, snapshots and logs")
    # Backend specifics
    agent_kernel: Path | None = Field(None, description="Guest kernel (Firecracker: uncompressed vmlinux)")
    agent_rootfs: Path | None = Field(None, description="Guest root filesystem image")
    agent_rootfs_dir: Path | None = Field(
        None,
        description="`smith rootfs` output_dir: QEMU and Firecracker VMs boot its active version (their own "
        "copy-on-write root disk; SMITH_AGENT_ROOTFS is then the initramfs that switches to it)",
    )
    runner_min_version: str | None = Field(
        None,
        description="Warn (agent start, `smith rootfs list`) when an image's GitHub runner is older than this, "
        "e.g. the newest actions/runner release you track",
    )
    agent_sticky_dir: Path | None = Field(
        None, description="Sticky disks' committed states; default <work>/qemu/sticky or <work>/firecracker/sticky"
    )
    agent_sticky_quota_mib: int = Field(51200, gt=0, description="Sticky disks: allocated MiB per org, LRU evicted")
    agent_kvm: Literal["auto", "on", "off"] = Field(
        "auto", description="off: never use /dev/kvm; on: use it even where it looks like PVM"
    )
    agent_firecracker_bin: str = "firecracker"
    agent_jailer_bin: str = "jailer"
    agent_qemu_bin: str = "qemu-system-x86_64"
    agent_cgroup_parent: str | None = Field(
        None,
        description="Sandbox: cgroup (under /sys/fs/cgroup) to make per-job cgroups in; default: the agent's own",
    )
    agent_sandbox_uid_base: int = Field(
        100_000, gt=0, description="Sandbox (agent as root): the job in slot n runs as uid base+n, one uid per job"
    )
    agent_network: bool = Field(False, description="Give VMs a tap on the smith bridge with NAT egress")
    agent_network_pool: str = Field("172.30.0.0/24", description="IPv4 pool: .1 is the bridge, VMs get the rest")
    agent_network_bridge: str = Field("smithbr0", description="Host bridge the taps join")
    agent_network_tap_prefix: str = Field("smt", description="Tap names are <prefix><slot>, e.g. smt12")
    agent_network_uplink: str | None = Field(None, description="Masquerade out of this interface only (e.g. eth0)")
    agent_network_host_ports: Annotated[list[Port], NoDecode] = Field(
        default_factory=list, description="TCP ports VMs may reach on the gateway address: control, cache, logs"
    )
    agent_network_host_udp_ports: Annotated[list[Port], NoDecode] = Field(
        default_factory=list, description="UDP ports, e.g. 53"
    )
    agent_network_deny: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DENY_BY_DEFAULT),
        description="Ranges VMs may never reach (default: private, link-local/metadata, loopback, multicast)",
    )
    agent_network_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Holes in the deny list VMs may reach anyway (e.g. a LAN resolver/32)"
    )
    agent_network_dns: str | None = Field(
        None,
        description="Resolver the VMs use; default: the host's upstream from /etc/resolv.conf or systemd-resolved's",
    )
    agent_network_check_seconds: float = Field(
        30.0, gt=0, description="How often Smith's nftables tables and firewall accepts are checked and put back"
    )
    agent_network_netns: str | None = Field(None, description="Build the network inside this named netns")
    agent_network_tap_user: str | None = Field(None, description="User (name or uid) allowed to open the taps")

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        return check_agent_id(value)

    @field_validator(
        "agent_labels",
        "agent_network_host_ports",
        "agent_network_host_udp_ports",
        "agent_network_deny",
        "agent_network_allow",
        mode="before",
    )
    @classmethod
    def _labels(cls, value: Any) -> Any:
        """A JSON list or a comma-separated string (``a,b``) from the environment."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("agent_warm_pool", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def work_dir(self) -> Path:
        return self.agent_work_dir or (self.data_dir / "agent")

    def problems(self) -> list[str]:
        found = []
        if self.agent_token is None:
            found.append("SMITH_AGENT_TOKEN is not set: the control plane will refuse this agent")
        if self.agent_backend == "firecracker" and not (self.agent_kernel and self.agent_rootfs):
            found.append("firecracker backend needs SMITH_AGENT_KERNEL and SMITH_AGENT_ROOTFS")
        if self.agent_network:
            from smith.agent.network import network_problems

            found += network_problems(self)
        return found
