"""A ``BlobStore`` in an S3-compatible bucket (AWS, MinIO, Ceph RGW, moto), through boto3 in worker threads.

Objects: ``<prefix>blobs/<key>`` for finished blobs and ``<prefix>uploads/<upload_id>/<part>`` for the parts of
an upload in progress. Each incoming part is first spooled to a local file (parts are at most a few hundred
MiB, so memory stays flat) and then PUT from that file: a seekable body is what lets a failed PUT be retried.
``complete`` joins the parts on the S3 side with a multipart upload of ``UploadPartCopy`` calls (no bytes
pass through this process), or one ``CopyObject`` for a single part. S3 needs every part but the last to be
at least 5 MiB; when a client chose smaller chunks the parts are streamed through in 8 MiB pieces instead.

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

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import boto3
import botocore.config
import botocore.exceptions as bexc

from smith.adapters.filesystem import write_chunks
from smith.adapters.resilience import CircuitBreaker, Resilient
from smith.errors import ConfigError, InvalidInput, NotFound, SmithError, Unavailable
from smith.logging import get_logger
from smith.retry import RetryPolicy

log = get_logger("smith.adapters.s3")

MIN_PART = 5 * 1024 * 1024
STREAM_PART = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024


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
    read_timeout: float = 300.0  # a 1 GiB UploadPartCopy can take minutes
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
        sizes = await self._part_sizes(upload_id)
        missing = [p for p in parts if p not in sizes]
        if missing:
            raise NotFound(f"{len(missing)} part(s) were never uploaded")
        total = sum(sizes[p] for p in parts)
        target = self._blob(key)
        if len(parts) == 1:
            source = {"Bucket": self.bucket, "Key": self._part(upload_id, parts[0])}
            await self.io.call(
                self.client.copy_object, Bucket=self.bucket, Key=target, CopySource=source, **self.options.write_args()
            )
        else:
            mpu = await self.io.call(
                self.client.create_multipart_upload, Bucket=self.bucket, Key=target, **self.options.write_args()
            )
            try:
                if all(sizes[p] >= MIN_PART for p in parts[:-1]):
                    done = await self._copy_parts(upload_id, parts, target, mpu["UploadId"])
                else:
                    done = await self._stream_parts(upload_id, parts, target, mpu["UploadId"])
                await self.io.call(
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=mpu["UploadId"],
                    MultipartUpload={"Parts": done},
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.io.run(self._abort_mpu, target, mpu["UploadId"])
                raise
        try:
            await self.abort(upload_id)
        except SmithError as exc:  # the blob is written; the janitor removes the parts later
            log.warning("s3 part cleanup failed; left to the janitor", upload=upload_id, error=exc.message)
        return total

    def _abort_mpu(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def _copy_parts(self, upload_id: str, parts: list[str], target: str, mpu: str) -> list[dict[str, Any]]:
        async def one(number: int, part: str) -> dict[str, Any]:
            r = await self.io.call(
                self.client.upload_part_copy,
                Bucket=self.bucket,
                Key=target,
                UploadId=mpu,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": self._part(upload_id, part)},
            )
            return {"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]}

        sem = asyncio.Semaphore(8)

        async def bounded(number: int, part: str) -> dict[str, Any]:
            async with sem:
                return await one(number, part)

        return list(await asyncio.gather(*(bounded(i + 1, p) for i, p in enumerate(parts))))

    async def _stream_parts(self, upload_id: str, parts: list[str], target: str, mpu: str) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        buf = bytearray()

        async def flush(size: int) -> None:
            number = len(done) + 1
            body = bytes(buf[:size])
            r = await self.io.call(
                self.client.upload_part, Bucket=self.bucket, Key=target, UploadId=mpu, PartNumber=number, Body=body
            )
            done.append({"PartNumber": number, "ETag": r["ETag"]})
            del buf[:size]

        for part in parts:
            async for chunk in self._read_key(self._part(upload_id, part), 0, None):
                buf += chunk
                while len(buf) >= STREAM_PART:  # every part but the last exactly STREAM_PART (R2 wants equal parts)
                    await flush(STREAM_PART)
        if buf or not done:
            await flush(len(buf))
        return done

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

    async def abort_stale_multipart(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than`` seconds ago (a crash in the
        middle of ``complete``); their parts are billed until then. Best-effort: returns how many went."""
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
        return int(head["ContentLength"])

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read_key(self._blob(key), start, end)

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
        await self.io.call(self.client.delete_object, Bucket=self.bucket, Key=self._blob(key))

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
