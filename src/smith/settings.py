"""Settings shared by every service. Each service subclasses ``CommonSettings`` in its own settings.py.

All settings come from ``SMITH_*`` environment variables (or a ``.env`` file), are built once by a composition
root and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=1, le=65535)]
# SMITH_CACHE_DOWNLOAD_HOST, read by the cache, the control plane and the agent alike: a DNS host name.
DOWNLOAD_HOST = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
"""A TCP or UDP port number."""


def default_data_dir() -> Path:
    """systemd's StateDirectory= (``$STATE_DIRECTORY``, e.g. /var/lib/smith) under a unit, else the XDG data dir."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "smith"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMITH_", env_file=".env", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console lines)")
    data_dir: Path = Field(default_factory=default_data_dir, description="Where embedded services keep data")
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL; unset means a private embedded Valkey under data_dir"
    )
    # Every HTTP service (smith.serving)
    http_max_connections: int = Field(
        4096, gt=0, description="Open client connections at most (past it the longest idle one is closed)"
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection that has not sent its request headers within this is closed"
    )
    http_keepalive_seconds: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after")
    http_backlog: int = Field(2048, gt=0, description="Listen backlog (connections the kernel queues)")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token /metrics asks for (unset: /metrics is open, like /healthz)"
    )
    # Tracing (smith.tracing): off unless an endpoint is set
    otel_exporter_endpoint: str | None = Field(
        None, description="OTLP endpoint for traces (http://collector:4318, or host:4317 with grpc); unset: off"
    )
    otel_exporter_protocol: Literal["http/protobuf", "grpc"] = Field("http/protobuf", description="OTLP transport")
    otel_exporter_headers: SecretStr | None = Field(
        None, description="Headers sent to the OTLP endpoint: key=value pairs separated by commas"
    )
    otel_sampler_ratio: float = Field(1.0, ge=0.0, le=1.0, description="Share of new traces kept (0..1)")
    api_docs: bool = Field(
        False, description="Serve /docs, /redoc and /openapi.json (unauthenticated): off in production"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
