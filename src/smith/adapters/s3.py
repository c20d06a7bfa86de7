"""A ``BlobStore`` in an S3-compatible bucket (AWS, MinIO, Ceph RGW, moto), through boto3 in worker threads.

Objects: ``<prefix>blobs/<key>`` for finished blobs and ``<prefix>uploads/<upload_id>/<part>`` for the parts of
an upload in progress. Each incoming part is first spooled to a local file (parts are at most a few hundred
MiB, so memory stays flat) and then PUT from that file: a seekable body is what lets a failed PUT be retried.
``complete`` copies nothing: it writes a small manifest object at ``blobs/<key>`` (JSON, with the metadata
``x-amz-meta-smith-parts`` and ``x-amz-meta-smith-size``) that lists the parts in order, and the parts stay
where they were uploaded. A read serves the parts in turn (ranged GETs of the parts a range covers); a delete
removes the parts, then the manifest. So a saved byte is written to the store once, whatever the part sizes
(no 5 MiB minimum, no equal sizes for R2, no ``UploadPartCopy`` of gigabytes). Blobs written as one object by
older versions are read as before. Manifests are immutable and cached in memory (``MANIFEST_CACHE`` of them).
The janitor must not take a finished entry's parts for an abandoned upload: it drops an upload's parts only
when its entry is gone from the metadata (``CacheService.janitor_once``).

Every call goes through ``Resilient``: retries with backoff and jitter, and a circuit breaker that makes calls
fail fast with ``Unavailable`` while the store is down. S3 calls run in the store's own thread pool (``threads``,
as many as the connection pool), not in asyncio's default one that spooling and the filesystem share.

S3-compatible stores differ from AWS (``S3Options``): with ``checksum="when_required"`` (the default for a custom
endpoint) uploads go with a Content-Length and no ``aws-chunked`` checksum trailer, and reads do not ask for
checksum validation, which R2 and several other stores refuse. Deleting the parts of an upload is best-effort:
``DeleteObjects`` (whose CRC32 some stores refuse: MinIO before 2025-01, OCI, OVH) falls back to one
``DeleteObject`` per key, the keys a ``DeleteObjects`` answer lists under ``Errors`` are retried one by one,
and a cleanup that still fails leaves the parts to the janitor instead of failing the save.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions as bexc
import orjson

from smith.adapters.filesystem import write_chunks
from smith.adapters.resilience import CircuitBreaker, Resilient
from smith.errors import ConfigError, InvalidInput, NotFound, SmithError, Unavailable
from smith.logging import get_logger
from smith.retry import RetryPolicy

log = get_logger("smith.adapters.s3")

READ_CHUNK = 1024 * 1024
MANIFEST_META = "smith-parts"  # user metadata of a manifest object: how many parts it lists
SIZE_META = "smith-size"  # and the blob's size
MANIFEST_CACHE = 4096


@dataclass(frozen=True)
class S3Options:
    """How to talk to one S3-compatible store; ``smith.cache.settings`` fills it from ``SMITH_CACHE_S3_*``."""

    endpoint_url: str | None = None
    region: str | None = None  # None: boto's own resolution (AWS_REGION, ~/.aws/config)
    prefix: str = ""
    checksum: Literal["auto", "when_supported", "when_required"] = "auto"  # auto: when_required off AWS
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # auto: path off AWS
    ca_bundle: str | None = None
    sse: str | None = None  # AES256 | aws:kms
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 300.0  # a slow store answering a big part
    threads: int = 64

    @property
    def checksum_mode(self) -> str:
        if self.checksum != "auto":
            return self.checksum
        return "when_required" if self.endpoint_url else "when_supported"

    @property
    def key_prefix(self) -> str:
        """``cache``, ``/cache/`` and ``cache/`` all mean ``cache/``."""
        p = self.prefix.strip("/")
        return f"{p}/" if p else ""

    def write_args(self) -> dict[str, str]:
        """Extra arguments of every call that creates an object."""
        out = {}
        if self.sse:
            out["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            out["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        return out

    def client_config(self) -> botocore.config.Config:
        style = self.addressing_style
        if style == "auto":
            style = "path" if self.endpoint_url else "auto"
        return botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"},  # ours, with the circuit breaker
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.threads,
            s3={"addressing_style": style},
            request_checksum_calculation=self.checksum_mode,
            response_checksum_validation=self.checksum_mode,
        )


def translate(exc: BaseException) -> SmithError:
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
            return NotFound(f"s3: {code}")
        if code == "EntityTooSmall":
            return InvalidInput("s3: a part other than the last is smaller than 5 MiB")
        if code == "NoSuchBucket":
            return ConfigError(f"s3: the bucket does not exist ({err.get('BucketName') or 'SMITH_CACHE_S3_BUCKET'})")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed"):
            return ConfigError(f"s3: {code}: the credentials are wrong (access key, secret or region)")
        if code == "AccessDenied" or status == 403:
            return ConfigError(
                f"s3: {code or status}: the credentials may not do this (see the IAM policy in the docs)"
            )
        if status == 501 or code == "NotImplemented":
            return SmithError(f"s3: the store does not implement this request: {err.get('Message', '')}")
        if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return Unavailable(f"s3: {code or status}", retry_after=1.0)
        return SmithError(f"s3: {code or status}: {err.get('Message', '')}")
    if isinstance(exc, bexc.BotoCoreError | OSError):
        return Unavailable(f"s3 unreachable: {type(exc).__name__}", retry_after=1.0)
    return SmithError(f"s3: {type(exc).__name__}: {exc}")


class S3BlobStore:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "",
        spool_dir: Path,
        policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        client: Any = None,
        options: S3Options | None = None,
    ) -> None:
        opts = options or S3Options()
        if endpoint_url or region or prefix:
            opts = replace(
                opts,
                endpoint_url=endpoint_url or opts.endpoint_url,
                region=region or opts.region,
                prefix=prefix or opts.prefix,
            )
        self.options = opts
        self.bucket = bucket
        self.prefix = opts.key_prefix
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=opts.endpoint_url,
            region_name=opts.region,
            verify=opts.ca_bundle,
            config=opts.client_config(),
        )
        self.executor = ThreadPoolExecutor(opts.threads, thread_name_prefix="smith-s3")
        self.io = Resilient(
            policy or RetryPolicy(4, base=0.1, max=2.0), breaker or CircuitBreaker(), translate, self.executor
        )
        self._per_key_deletes = False  # set once a store refused DeleteObjects
        # blob key -> its parts [(object key, size)], or None for a blob stored as one object
        self._layouts: OrderedDict[str, list[tuple[str, int]] | None] = OrderedDict()

    def _blob(self, key: str) -> str:
        return f"{self.prefix}blobs/{key}"

    def _part(self, upload_id: str, part: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/{part}"

    async def write_part(
        self, upload_id: str, part: str, chunks: AsyncIterator[bytes], size: int, offset: int | None = None
    ) -> int:
        self.io.breaker.refuse_if_open()  # refuse before reading a body the store cannot take
        fd, spool = tempfile.mkstemp(dir=self.spool_dir, prefix="part-")
        written = 0
        try:
            try:
                written = await write_chunks(fd, chunks, size)
            finally:
                os.close(fd)
            await self.io.call(self._put_file, self._part(upload_id, part), spool)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
        return written

    def _put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as body:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **self.options.write_args())

    async def _part_sizes(self, upload_id: str) -> dict[str, int]:
        sizes: dict[str, int] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._part(upload_id, "")}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self.io.call(self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                sizes[obj["Key"].rsplit("/", 1)[1]] = int(obj["Size"])
            token = page.get("NextContinuationToken")
            if not token:
                return sizes

    async def complete(self, upload_id: str, parts: list[str], key: str) -> int:
        """Write the manifest of ``parts`` (in order) as blob ``key``; the parts stay where they are. Parts of
        the upload that are not listed are deleted (best-effort: the janitor takes what is left)."""
        sizes = await self._part_sizes(upload_id)
        missing = [p for p in parts if p not in sizes]
        if missing:
            raise NotFound(f"{len(missing)} part(s) were never uploaded")
        layout = [(self._part(upload_id, p), sizes[p]) for p in parts]
        total = sum(size for _, size in layout)
        body = orjson.dumps({"upload": upload_id, "parts": layout})
        await self.io.call(
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._blob(key),
            Body=body,
            ContentType="application/json",
            Metadata={MANIFEST_META: str(len(layout)), SIZE_META: str(total)},
            **self.options.write_args(),
        )
        self._remember(key, layout)
        listed = set(parts)
        unlisted = [self._part(upload_id, p) for p in sizes if p not in listed]
        if unlisted and await self._delete_keys(unlisted):
            log.warning("s3 unlisted parts not deleted; left to the janitor", upload=upload_id)
        return total

    def _remember(self, key: str, layout: list[tuple[str, int]] | None) -> None:
        self._layouts[key] = layout
        self._layouts.move_to_end(key)
        while len(self._layouts) > MANIFEST_CACHE:
            self._layouts.popitem(last=False)

    async def _layout(self, key: str) -> list[tuple[str, int]] | None:
        """The parts of blob ``key`` (None: one object); ``NotFound`` if there is no such blob."""
        if key in self._layouts:
            self._layouts.move_to_end(key)
            return self._layouts[key]
        head = await self.io.call(self.client.head_object, Bucket=self.bucket, Key=self._blob(key))
        layout: list[tuple[str, int]] | None = None
        if MANIFEST_META in head.get("Metadata", {}):
            resp = await self.io.call(self.client.get_object, Bucket=self.bucket, Key=self._blob(key))
            raw = await self.io.run(_read_all, resp["Body"])
            layout = [(str(k), int(n)) for k, n in orjson.loads(raw)["parts"]]
        self._remember(key, layout)
        return layout

    async def abort(self, upload_id: str) -> None:
        """Delete an upload's parts; ``Unavailable`` if some are still there afterwards."""
        keys = [self._part(upload_id, p) for p in await self._part_sizes(upload_id)]
        left = await self._delete_keys(keys)
        if left:
            raise Unavailable(f"s3: {len(left)} part(s) of upload {upload_id} could not be deleted: {left[0]}")

    async def _delete_keys(self, keys: list[str]) -> list[str]:
        """Delete keys, in batches of ``DeleteObjects`` where the store takes it, else one by one; the keys that
        are still there."""
        failed: list[str] = []
        batches = [] if self._per_key_deletes else [keys[i : i + 1000] for i in range(0, len(keys), 1000)]
        single = [] if batches else list(keys)
        for batch in batches:
            try:
                resp = await self.io.call(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except Unavailable:
                failed += batch
                continue
            except SmithError as exc:  # refused (no Content-MD5, not implemented): one DeleteObject per key
                log.warning("s3 DeleteObjects refused; deleting one key at a time", error=exc.message)
                self._per_key_deletes = True
                single += batch
                continue
            single += [str(e.get("Key")) for e in resp.get("Errors", []) if e.get("Key")]
        for key in single:
            try:
                await self.io.call(self.client.delete_object, Bucket=self.bucket, Key=key)
            except NotFound:
                pass
            except SmithError:
                failed.append(key)
        return failed

    def _abort_mpu(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def abort_stale_multipart(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than`` seconds ago (left by older
        versions, which joined parts with a multipart copy); their parts are billed until then. Best-effort:
        returns how many went."""
        cutoff = time.time() - older_than
        page = await self.io.call(self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=f"{self.prefix}blobs/")
        aborted = 0
        for up in page.get("Uploads", []):
            if up["Initiated"].timestamp() >= cutoff:
                continue
            try:
                await self.io.call(self._abort_mpu, up["Key"], up["UploadId"])
                aborted += 1
            except SmithError as exc:
                log.warning("s3 abort of a stale multipart upload failed", key=up["Key"], error=exc.message)
        return aborted

    async def size(self, key: str) -> int | None:
        try:
            head = await self.io.call(self.client.head_object, Bucket=self.bucket, Key=self._blob(key))
        except NotFound:
            return None
        meta = head.get("Metadata", {})
        return int(meta[SIZE_META]) if MANIFEST_META in meta else int(head["ContentLength"])

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read_blob(key, start, end)

    async def _read_blob(self, key: str, start: int, end: int | None) -> AsyncIterator[bytes]:
        layout = await self._layout(key)
        if layout is None:
            async for chunk in self._read_key(self._blob(key), start, end):
                yield chunk
            return
        pos = 0
        for part_key, size in layout:
            lo, hi = pos, pos + size - 1
            pos += size
            if size == 0 or hi < start:
                continue
            if end is not None and lo > end:
                break
            stop = hi if end is None else min(hi, end)
            async for chunk in self._read_key(part_key, max(start, lo) - lo, stop - lo):
                yield chunk

    async def _read_key(self, key: str, start: int, end: int | None) -> AsyncIterator[bytes]:
        rng = f"bytes={start}-{'' if end is None else end}"
        resp = await self.io.call(self.client.get_object, Bucket=self.bucket, Key=key, Range=rng)
        body = resp["Body"]
        try:
            while True:
                try:
                    chunk = await self.io.run(body.read, READ_CHUNK)
                except Exception as exc:
                    raise translate(exc) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        """Remove the blob's parts, then its manifest (or the one object); ``Unavailable`` if parts are left, so
        the delete is retried with the manifest still there to name them."""
        try:
            layout = await self._layout(key)
        except NotFound:
            return
        if layout:
            left = await self._delete_keys(sorted({k for k, _ in layout}))
            if left:
                raise Unavailable(f"s3: {len(left)} part(s) of blob {key} could not be deleted: {left[0]}")
        await self.io.call(self.client.delete_object, Bucket=self.bucket, Key=self._blob(key))
        self._layouts.pop(key, None)

    async def stale_uploads(self, older_than: float) -> list[str]:
        cutoff = time.time() - older_than
        newest: dict[str, float] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self.prefix}uploads/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self.io.call(self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                upload = obj["Key"][len(f"{self.prefix}uploads/") :].split("/", 1)[0]
                newest[upload] = max(newest.get(upload, 0.0), obj["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not token:
                break
        return [u for u, t in newest.items() if t < cutoff]

    async def check(self) -> None:
        await self.io.call(self.client.head_bucket, Bucket=self.bucket)

    async def aclose(self) -> None:
        await self.io.run(self.client.close)
        self.executor.shutdown(wait=False)


def _read_all(body: Any) -> bytes:
    try:
        return bytes(body.read())
    finally:
        body.close()
