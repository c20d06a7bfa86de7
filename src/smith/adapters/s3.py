"""A ``BlobStore`` in an S3-compatible bucket (AWS, MinIO, Ceph RGW, moto), through boto3 in worker threads.

Objects: ``<prefix>blobs/<key>`` for finished blobs and ``<prefix>uploads/<upload_id>/<part>`` for the parts of
an upload in progress. Each incoming part is first spooled to a local file (parts are at most a few hundred
MiB, so memory stays flat) and then PUT from that file: a seekable body is what lets a failed PUT be retried.
``complete`` joins the parts on the S3 side with a multipart upload of ``UploadPartCopy`` calls (no bytes
pass through this process), or one ``CopyObject`` for a single part. S3 needs every part but the last to be
at least 5 MiB; when a client chose smaller chunks the parts are streamed through in 8 MiB pieces instead.

Every call goes through ``Resilient``: retries with backoff and jitter, and a circuit breaker that makes calls
fail fast with ``Unavailable`` while the store is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions as bexc

from smith.adapters.filesystem import write_chunks
from smith.adapters.resilience import CircuitBreaker, Resilient
from smith.errors import ConfigError, InvalidInput, NotFound, SmithError, Unavailable
from smith.retry import RetryPolicy

MIN_PART = 5 * 1024 * 1024
STREAM_PART = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024


def translate(exc: BaseException) -> SmithError:
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
            return NotFound(f"s3: {code}")
        if code == "EntityTooSmall":
            return InvalidInput("s3: a part other than the last is smaller than 5 MiB")
        if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return ConfigError(f"s3: {code}: check the bucket and credentials")
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
        region: str = "us-east-1",
        prefix: str = "",
        spool_dir: Path,
        policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=botocore.config.Config(
                retries={"max_attempts": 1, "mode": "standard"},  # ours, below, with the circuit breaker
                connect_timeout=3,
                read_timeout=60,
                max_pool_connections=64,
                s3={"addressing_style": "path"} if endpoint_url else None,
            ),
        )
        self.io = Resilient(policy or RetryPolicy(4, base=0.1, max=2.0), breaker or CircuitBreaker(), translate)

    def _blob(self, key: str) -> str:
        return f"{self.prefix}blobs/{key}"

    def _part(self, upload_id: str, part: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/{part}"

    async def write_part(self, upload_id: str, part: str, chunks: AsyncIterator[bytes], size: int) -> int:
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
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

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
            await self.io.call(self.client.copy_object, Bucket=self.bucket, Key=target, CopySource=source)
        else:
            mpu = await self.io.call(self.client.create_multipart_upload, Bucket=self.bucket, Key=target)
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
                    await asyncio.to_thread(
                        self.client.abort_multipart_upload, Bucket=self.bucket, Key=target, UploadId=mpu["UploadId"]
                    )
                raise
        await self.abort(upload_id)
        return total

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

        async def flush() -> None:
            number = len(done) + 1
            body = bytes(buf)
            r = await self.io.call(
                self.client.upload_part, Bucket=self.bucket, Key=target, UploadId=mpu, PartNumber=number, Body=body
            )
            done.append({"PartNumber": number, "ETag": r["ETag"]})
            buf.clear()

        for part in parts:
            async for chunk in self._read_key(self._part(upload_id, part), 0, None):
                buf += chunk
                if len(buf) >= STREAM_PART:
                    await flush()
        if buf or not done:
            await flush()
        return done

    async def abort(self, upload_id: str) -> None:
        sizes = await self._part_sizes(upload_id)
        keys = [{"Key": self._part(upload_id, p)} for p in sizes]
        for i in range(0, len(keys), 1000):
            await self.io.call(self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000]})

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
                    chunk = await asyncio.to_thread(body.read, READ_CHUNK)
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
        await asyncio.to_thread(self.client.close)
