"""Log pipeline settings (``SMITH_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from smith.settings import CommonSettings, Port


class LogsSettings(CommonSettings):
    logs_host: str = Field("127.0.0.1", description="Address `smith logs serve` listens on")
    logs_port: Port = Field(8070, description="Port `smith logs serve` listens on")
    jwt_secret: SecretStr | None = Field(None, description="Verifies operator tokens (reads)")
    agent_token_secret: SecretStr | None = Field(
        None, description="Verifies the per-job log tokens (ingestion) unless SMITH_LOGS_TOKEN_SECRET is set"
    )
    logs_token_secret: SecretStr | None = Field(
        None, description="Verifies per-job log tokens: set it (on the control plane too) to keep the agent secret off"
    )
    # Storage
    clickhouse_url: str | None = Field(None, description="ClickHouse HTTP interface; unset: chdb in-process")
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr | None = None
    clickhouse_database: str = Field("smith", description="Database holding the log tables")
    clickhouse_cluster: str = Field(
        "",
        description="ClickHouse cluster name: DDL runs ON CLUSTER, tables are Replicated (one shard, any replicas)",
    )
    clickhouse_dialect: Literal["auto", "modern", "legacy"] = Field(
        "auto", description="auto (by server version), modern, or legacy (< 22.8)"
    )
    chdb_dir: Path | None = Field(None, description="chdb data directory; default <data_dir>/logs/chdb")
    log_retention_days: int = Field(30, ge=1, le=3650, description="Lines older than this are dropped")
    # Ingestion
    logs_batch_rows: int = Field(100_000, gt=0, description="Most lines in one INSERT")
    logs_batch_min_rows: int = Field(5_000, gt=0, description="Write as soon as this many lines wait...")
    logs_batch_delay_seconds: float = Field(0.2, gt=0, le=10, description="...or once the oldest waited this long")
    logs_insert_lanes: int = Field(
        2, ge=1, le=16, description="Inserts in flight at once (each job's lines still go in order)"
    )
    logs_max_pending_rows: int = Field(
        1_000_000, gt=0, description="Lines waiting to be written before POSTs get 429 (back-pressure)"
    )
    logs_max_line_bytes: int = Field(64 * 1024, ge=256, description="Longer lines are cut, with a marker")
    logs_max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest POST /v1/logs body")
    logs_max_batch_lines: int = Field(100_000, gt=0, description="Most lines in one POST")
    logs_search_default_window_seconds: int = Field(
        24 * 3600, gt=0, description="A search given neither since nor job_id looks this far back"
    )
    logs_search_max_seconds: int = Field(
        30, ge=1, le=3600, description="ClickHouse stops a search after this long (max_execution_time)"
    )
    logs_follow_poll_seconds: float = Field(1.0, gt=0, description="How often a follower re-reads when idle")

    @field_validator("clickhouse_database", "clickhouse_cluster")
    @classmethod
    def _database(cls, value: str, info: ValidationInfo) -> str:
        import re

        if info.field_name == "clickhouse_cluster" and value == "":
            return value
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError("must be a plain identifier (letters, digits, underscore)")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> LogsSettings:
        if self.chdb_dir is None:
            self.chdb_dir = self.data_dir / "logs" / "chdb"
        return self

    def ingest_secret(self) -> str | None:
        """The secret per-job log tokens are signed with."""
        secret = self.logs_token_secret or self.agent_token_secret
        return secret.get_secret_value() if secret else None

    def problems(self) -> list[str]:
        """What would stop the pipeline from doing its job; empty when all is well."""
        found = []
        if self.ingest_secret() is None:
            found.append(
                "neither SMITH_LOGS_TOKEN_SECRET nor SMITH_AGENT_TOKEN_SECRET is set: every POST /v1/logs gets 401"
            )
        if self.jwt_secret is None:
            found.append("SMITH_JWT_SECRET is not set: nobody can read logs (401)")
        if self.clickhouse_url and not self.clickhouse_url.startswith(("http://", "https://")):
            found.append(f"SMITH_CLICKHOUSE_URL {self.clickhouse_url!r} is not an http(s) URL")
        url = self.clickhouse_url or ""
        local = any(h in url for h in ("127.0.0.1", "localhost", "[::1]"))
        if url.startswith("http://") and self.clickhouse_password and not local:
            found.append("SMITH_CLICKHOUSE_PASSWORD goes over plain http to a remote host: use https")
        if self.logs_batch_rows > self.logs_max_pending_rows:
            found.append("SMITH_LOGS_BATCH_ROWS is above SMITH_LOGS_MAX_PENDING_ROWS: batches flush by delay only")
        return found
