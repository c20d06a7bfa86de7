"""Cache server settings (``SMITH_CACHE_*`` plus the common ``SMITH_*`` ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from smith.settings import DOWNLOAD_HOST, CommonSettings, Port

GiB = 1024**3


class CacheSettings(CommonSettings):
    cache_host: str = Field("127.0.0.1", description="Address `smith cache serve` listens on")
    cache_port: Port = Field(8090, description="Port `smith cache serve` listens on")
    cache_public_url: str | None = Field(
        None,
        description="Base URL runners use to reach this server; signed upload/download URLs point here "
        "(default: taken from each request's Host header)",
    )
    cache_download_host: str | None = Field(
        None,
        pattern=DOWNLOAD_HOST,
        description="Host name put in download URLs instead of the public URL's (port and scheme kept), e.g. "
        "`cache.blob.core.windows.net`: the @actions/cache client downloads in parallel (8 x 4 MiB ranges) only "
        "from a host ending in `.blob.core.windows.net`. Set it only where the runners resolve that name to this "
        "server (Smith's own images and backends); downloads elsewhere would go to Azure",
    )
    cache_shared_secret: SecretStr | None = Field(
        None, description="HMAC secret of cache tokens and signed URLs (shared with the control plane)"
    )
    cache_storage: Literal["filesystem", "s3"] = Field("filesystem", description="filesystem or s3")
    cache_storage_path: Path | None = Field(None, description="Blob directory (default <data_dir>/cache/blobs)")
    cache_direct_io: bool = Field(
        True,
        description="Filesystem store: write v2 blocks past the page cache (O_DIRECT; about half the server's CPU "
        "per save); off: through the page cache. Filesystems that refuse O_DIRECT get the page cache either way",
    )
    cache_s3_endpoint: str | None = Field(None, description="S3-compatible endpoint URL (unset: AWS)")
    cache_s3_bucket: str | None = None
    cache_s3_region: str | None = Field(
        None, description="Region (unset: AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config, as boto resolves it)"
    )
    cache_s3_prefix: str = Field("", description="Key prefix inside the bucket ('cache', '/cache/': 'cache/')")
    cache_s3_checksum: Literal["auto", "when_supported", "when_required"] = Field(
        "auto",
        description="Request checksums and response validation: when_required sends a Content-Length and no "
        "aws-chunked trailer (R2, older MinIO, Ceph); auto = when_required with a custom endpoint, else when_supported",
    )
    cache_s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the path or the host name; auto = path with a custom endpoint"
    )
    cache_s3_ca_bundle: Path | None = Field(None, description="CA bundle for an endpoint with a private CA")
    cache_s3_sse: str | None = Field(None, description="Server-side encryption of new objects: AES256 or aws:kms")
    cache_s3_sse_kms_key_id: str | None = Field(None, description="KMS key for SMITH_CACHE_S3_SSE=aws:kms")
    cache_s3_storage_class: str | None = Field(None, description="Storage class of new objects (e.g. STANDARD)")
    cache_s3_read_timeout: float = Field(300.0, gt=0, description="Seconds to wait for an S3 answer (part copies)")
    cache_s3_threads: int = Field(64, ge=1, description="Threads (and connections) for S3 calls, the store's own")
    cache_s3_max_retries: int = Field(4, ge=0, description="Retries of one S3 call after its first attempt")
    cache_s3_retry_base: float = Field(0.1, gt=0, description="First backoff (s); doubles, with full jitter")
    cache_s3_retry_max: float = Field(2.0, gt=0, description="Longest backoff between two attempts (s)")
    cache_s3_circuit_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit")
    cache_s3_circuit_reset: float = Field(30.0, gt=0, description="Seconds the circuit stays open before a probe")
    cache_max_entry_bytes: int = Field(10 * GiB, gt=0, description="Largest entry accepted")
    cache_org_quota_bytes: int = Field(50 * GiB, gt=0, description="Per-org size; least recently used go first")
    cache_unused_days: float = Field(7.0, gt=0, description="Entries not read or written for this long are evicted")
    cache_upload_ttl_seconds: float = Field(3600.0, gt=0, description="Unfinished uploads older than this are dropped")
    cache_url_ttl_seconds: float = Field(3600.0, gt=0, description="Lifetime of signed upload/download URLs")
    cache_janitor_interval_seconds: float = Field(60.0, gt=0, description="How often eviction and cleanup run")
    cache_max_header_bytes: int = Field(
        32 * 1024, ge=4096, description="Largest request head (request line + headers); larger ones get 431"
    )
    cache_spool_dir: Path | None = Field(
        None, description="Where S3 parts are staged before upload (default <data_dir>/cache/spool)"
    )

    @property
    def storage_path(self) -> Path:
        return self.cache_storage_path or self.data_dir / "cache" / "blobs"

    @property
    def spool_dir(self) -> Path:
        return self.cache_spool_dir or self.data_dir / "cache" / "spool"

    def secret(self) -> str | None:
        return self.cache_shared_secret.get_secret_value() if self.cache_shared_secret else None

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.cache_shared_secret:
            out.append("SMITH_CACHE_SHARED_SECRET is not set: every request will be refused (401)")
        elif len(self.cache_shared_secret.get_secret_value()) < 32:
            out.append("SMITH_CACHE_SHARED_SECRET is shorter than 32 characters")
        if self.cache_storage == "s3" and not self.cache_s3_bucket:
            out.append("SMITH_CACHE_STORAGE=s3 needs SMITH_CACHE_S3_BUCKET")
        if not self.redis_url:
            out.append("SMITH_REDIS_URL is not set: metadata goes to an embedded Valkey (one replica only)")
        if self.cache_max_entry_bytes > self.cache_org_quota_bytes:
            out.append("SMITH_CACHE_MAX_ENTRY_BYTES is larger than SMITH_CACHE_ORG_QUOTA_BYTES")
        if self.cache_s3_ca_bundle and not self.cache_s3_ca_bundle.is_file():
            out.append(f"SMITH_CACHE_S3_CA_BUNDLE={self.cache_s3_ca_bundle} is not a file")
        if self.cache_s3_sse_kms_key_id and self.cache_s3_sse != "aws:kms":
            out.append("SMITH_CACHE_S3_SSE_KMS_KEY_ID is set but SMITH_CACHE_S3_SSE is not aws:kms")
        if self.cache_s3_retry_base > self.cache_s3_retry_max:
            out.append("SMITH_CACHE_S3_RETRY_BASE is larger than SMITH_CACHE_S3_RETRY_MAX")
        return out
