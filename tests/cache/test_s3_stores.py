"""S3 as real stores behave: checksum headers, refused DeleteObjects, errors before the answer, own threads.

``StrictS3Server`` (tests/cache/s3stub.py) is an HTTPS endpoint that records headers and refuses what R2 and an
older MinIO refuse; moto covers the rest.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from smith.adapters.filesystem import FilesystemBlobStore
from smith.adapters.resilience import CircuitBreaker
from smith.adapters.s3 import S3BlobStore, S3Options
from smith.cache.metadata import Metadata
from smith.cache.service import CacheService
from smith.cache.settings import CacheSettings
from smith.domain.cache import Tenant
from smith.errors import SmithError, Unavailable
from smith.retry import RetryPolicy
from tests.cache.conftest import client, make_s3
from tests.cache.s3stub import StrictS3Server
from tests.cache.test_protocol import TWIRP, VERSION, restore_v2, save_v2

CHECKSUM_HEADERS = ("x-amz-trailer", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-crc32", "x-amz-checksum-mode")


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StrictS3Server]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with StrictS3Server(tmp_path) as server:
        yield server


def strict_store(server: StrictS3Server, tmp_path: Path, **options: Any) -> S3BlobStore:
    return S3BlobStore(
        "bkt",
        options=S3Options(endpoint_url=server.url, ca_bundle=str(server.cert), **options),
        spool_dir=tmp_path / "spool",
        policy=RetryPolicy(0, 0.001, 0.001),
        breaker=CircuitBreaker(100, 60),
    )


def test_checksum_mode_defaults() -> None:
    assert S3Options(endpoint_url="https://r2.example").checksum_mode == "when_required"
    assert S3Options().checksum_mode == "when_supported"  # AWS itself
    assert S3Options(endpoint_url="https://x", checksum="when_supported").checksum_mode == "when_supported"
    assert [S3Options(prefix=p).key_prefix for p in ("", "/", "cache", "/cache/", "a/b/")] == [
        "",
        "",
        "cache/",
        "cache/",
        "a/b/",
    ]


async def test_uploads_to_a_custom_endpoint_are_plain_over_https(strict: StrictS3Server, tmp_path: Path) -> None:
    """Over HTTPS the locked botocore would send ``aws-chunked`` with a CRC32 trailer and no Content-Length, and ask
    for checksum validation on reads: R2 answers 501. With a custom endpoint the default is ``when_required``."""
    store = strict_store(strict, tmp_path)
    assert await store.write_part("1", "p", chunks(b"hello"), 5) == 5
    [put] = strict.state.requests("PUT")
    assert put.headers["content-length"] == "5"
    assert "aws-chunked" not in put.headers.get("content-encoding", "")
    assert not [h for h in CHECKSUM_HEADERS if h in put.headers]
    await store.complete("1", ["p"], "entries/acme/1")
    assert b"".join([c async for c in store.read("entries/acme/1")]) == b"hello"
    [get] = [s for s in strict.state.requests("GET") if "list-type" not in s.query]
    assert "x-amz-checksum-mode" not in get.headers
    assert strict.state.refused == []
    await store.aclose()


async def test_when_supported_is_what_r2_refuses(strict: StrictS3Server, tmp_path: Path) -> None:
    store = strict_store(strict, tmp_path, checksum="when_supported")
    with pytest.raises(SmithError, match="does not implement"):
        await store.write_part("1", "p", chunks(b"hello"), 5)
    assert strict.state.refused and "aws-chunked" in strict.state.refused[0]
    await store.aclose()


async def test_new_objects_carry_encryption_and_storage_class(strict: StrictS3Server, tmp_path: Path) -> None:
    store = strict_store(strict, tmp_path, sse="AES256", storage_class="STANDARD_IA", prefix="/cache/")
    await store.write_part("1", "p", chunks(b"x"), 1)
    await store.complete("1", ["p"], "entries/acme/1")
    put, manifest = strict.state.requests("PUT")
    for req in (put, manifest):
        assert req.headers["x-amz-server-side-encryption"] == "AES256"
        assert req.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert manifest.path == "/bkt/cache/blobs/entries/acme/1"
    await store.aclose()


async def test_refused_delete_objects_falls_back_to_one_delete_per_key(strict: StrictS3Server, tmp_path: Path) -> None:
    store = strict_store(strict, tmp_path)
    for name in ("a", "b", "c"):
        await store.write_part("9", name, chunks(name.encode()), 1)
    await store.abort("9")
    assert strict.state.objects == {}
    assert len(strict.state.requests("DELETE")) == 3
    posts = len(strict.state.requests("POST"))
    await store.write_part("10", "a", chunks(b"a"), 1)
    await store.abort("10")  # the store refused once: straight to per-key deletes
    assert len(strict.state.requests("POST")) == posts
    await store.aclose()


async def test_delete_objects_errors_are_read_and_retried(strict: StrictS3Server, tmp_path: Path) -> None:
    strict.state.require_md5 = False
    strict.state.delete_errors = {"uploads/9/b"}
    store = strict_store(strict, tmp_path)
    for name in ("a", "b"):
        await store.write_part("9", name, chunks(name.encode()), 1)
    await store.abort("9")  # "b" came back under <Errors>: deleted on its own
    assert strict.state.objects == {}
    assert [d.path for d in strict.state.requests("DELETE")] == ["/bkt/uploads/9/b"]
    await store.aclose()


async def test_janitor_pass_survives_an_abort_that_fails(
    settings: CacheSettings, redis_client: Any, tmp_path: Path
) -> None:
    class Stubborn(FilesystemBlobStore):
        async def abort(self, upload_id: str) -> None:
            if upload_id == "7":
                raise Unavailable("refused")
            await super().abort(upload_id)

    store = Stubborn(tmp_path / "blobs")
    for upload in ("7", "8"):
        await store.write_part(upload, "p", chunks(b"x"), 1)
    service = CacheService(
        settings.model_copy(update={"cache_upload_ttl_seconds": 0.001}), Metadata(redis_client), store
    )
    done = await service.janitor_once()
    assert done["orphans"] == 1
    assert await store.stale_uploads(-1) == ["7"]


async def test_stale_multipart_uploads_are_aborted(moto_url: str, bucket: str, tmp_path: Path) -> None:
    store = make_s3(moto_url, bucket, tmp_path, prefix="c/")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_multipart_upload(Bucket=bucket, Key="c/blobs/entries/acme/1")
    s3.create_multipart_upload(Bucket=bucket, Key="someone-else/x")
    assert await store.abort_stale_multipart(-1) == 1  # (moto dates every upload 2010: no test of the age here)
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == ["someone-else/x"]


async def test_s3_calls_run_in_the_stores_own_threads(moto_url: str, bucket: str, tmp_path: Path) -> None:
    store = make_s3(moto_url, bucket, tmp_path)
    names: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda **_: names.append(threading.current_thread().name))
    await store.write_part("1", "p", chunks(b"abc"), 3)
    await store.complete("1", ["p"], "entries/acme/1")
    assert b"".join([c async for c in store.read("entries/acme/1")]) == b"abc"
    assert names and all(n.startswith("smith-s3") for n in names), names


def test_region_unset_leaves_aws_region_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    store = S3BlobStore("b", spool_dir=tmp_path)
    assert store.client.meta.region_name == "eu-west-3"
    assert CacheSettings().cache_s3_region is None


def test_download_errors_come_before_the_answer(serve: Any, moto_url: str, bucket: str, tmp_path: Path) -> None:
    """The object is fetched before the 200 goes out: a missing object is a 404, not a 200 with no body; and
    while the circuit is open restores miss instead of handing out URLs that fail."""
    store = make_s3(moto_url, bucket, tmp_path, breaker=CircuitBreaker(1, 600))
    srv = serve(store)
    c = client(srv)
    save_v2(c, "k", b"payload")
    url = c.post(f"{TWIRP}/GetCacheEntryDownloadURL", json={"key": "k", "version": VERSION}).json()[
        "signed_download_url"
    ]
    for obj in boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").list_objects_v2(Bucket=bucket)[
        "Contents"
    ]:
        boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").delete_object(Bucket=bucket, Key=obj["Key"])
    assert httpx.get(url).status_code == 404
    store.io.breaker.failure()  # open
    assert restore_v2(c, "k") is None
    assert c.get("/_apis/artifactcache/cache", params={"keys": "k", "version": VERSION}).status_code == 204


async def test_a_save_writes_each_byte_once_and_copies_nothing(moto_url: str, bucket: str, tmp_path: Path) -> None:
    """Parts of any size (under S3's 5 MiB part minimum, unequal, listed twice) become the blob through a
    manifest: no multipart upload, no UploadPartCopy, no CopyObject; the bytes PUT are the parts' bytes plus a
    manifest of a few hundred bytes. Every range reads back right across part boundaries."""
    store = make_s3(moto_url, bucket, tmp_path)
    calls: list[str] = []
    put: list[int] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject",
        lambda params, **_: put.append(len(params["Body"]) if isinstance(params["Body"], bytes) else -1),
    )
    sizes = [3 * 1024 * 1024 + 7, 1, 2 * 1024 * 1024, 5]
    data = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    for i, part in enumerate(data):
        await store.write_part("3", f"b{i}", chunks(part), len(part))
    order = ["b0", "b1", "b2", "b1", "b3"]  # a block list may name a block twice
    whole = b"".join(data[int(p[1:])] for p in order)
    assert await store.complete("3", order, "entries/acme/3") == len(whole)
    assert not {"CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CopyObject"} & set(calls)
    manifest = [n for n in put if n != -1]
    assert len(manifest) == 1 and manifest[0] < 1024  # the parts went up from files (-1), then one manifest
    assert await store.size("entries/acme/3") == len(whole)
    fresh = make_s3(moto_url, bucket, tmp_path / "other")  # a replica that has not seen the manifest yet
    assert b"".join([c async for c in fresh.read("entries/acme/3")]) == whole
    edges = [0, 1, sizes[0] - 1, sizes[0], sizes[0] + 1, len(whole) - 6, len(whole) - 1]
    for start in edges:
        for end in (start, start + 1, start + 3 * 1024 * 1024, len(whole) - 1):
            end = min(end, len(whole) - 1)
            assert b"".join([c async for c in fresh.read("entries/acme/3", start, end)]) == whole[start : end + 1]
    await fresh.delete("entries/acme/3")
    left = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    assert left.get("KeyCount", 0) == 0  # parts and manifest gone


async def test_a_blob_of_an_older_version_is_still_read(moto_url: str, bucket: str, tmp_path: Path) -> None:
    """Blobs written as one object (before manifests) are read, sized and deleted as before."""
    store = make_s3(moto_url, bucket, tmp_path)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="blobs/entries/acme/5", Body=b"0123456789")
    assert await store.size("entries/acme/5") == 10
    assert b"".join([c async for c in store.read("entries/acme/5", 2, 4)]) == b"234"
    await store.delete("entries/acme/5")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


async def test_the_janitor_keeps_the_parts_of_finished_entries(
    settings: CacheSettings, redis_client: Any, moto_url: str, bucket: str, tmp_path: Path
) -> None:
    """A finished entry's blob is its parts, under uploads/: the orphan sweep takes an upload's parts only when
    its entry is gone, so restores keep working after the janitor ran; an abandoned upload is still dropped."""
    store = make_s3(moto_url, bucket, tmp_path)
    service = CacheService(
        settings.model_copy(update={"cache_upload_ttl_seconds": 0.001}), Metadata(redis_client), store
    )
    who = Tenant(org="acme", repo="web", ref="refs/heads/main", read_refs=("refs/heads/main",))
    entry_id = await service.reserve(who, "kept", VERSION)
    await service.write_part(entry_id, "a", chunks(b"abc"), 3)
    await service.write_part(entry_id, "b", chunks(b"def"), 3)
    await service.assemble(entry_id, ["a", "b"])
    await service.finalize(who, "kept", VERSION, 6)
    await store.write_part("999999", "x", chunks(b"orphan"), 6)  # no entry: abandoned
    done = await service.janitor_once()
    assert done["orphans"] == 1 and await store.stale_uploads(-1) == [str(entry_id)]
    download = await service.open(entry_id, None)
    assert b"".join([c async for c in download.body]) == b"abcdef"


def test_store_answers_are_told_apart() -> None:
    from botocore.exceptions import ClientError

    from smith.adapters.s3 import translate
    from smith.errors import ConfigError

    def err(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert "does not exist" in translate(err("NoSuchBucket", 404)).message
    assert isinstance(translate(err("NoSuchBucket", 404)), ConfigError)
    assert "credentials are wrong" in translate(err("InvalidAccessKeyId", 403)).message
    assert "IAM policy" in translate(err("AccessDenied", 403)).message
    not_implemented = translate(err("NotImplemented", 501))
    assert not not_implemented.retryable  # an answer, not an outage: the circuit does not count it
    assert translate(err("InternalError", 500)).retryable


async def test_a_fetched_body_is_closed_when_nothing_is_read(
    settings: CacheSettings, redis_client: Any, tmp_path: Path
) -> None:
    """HEAD fetches the first chunk (to answer errors first) and sends no body: the store's stream is closed."""
    closed: list[bool] = []

    class Watched(FilesystemBlobStore):
        open_range = None  # type: ignore[assignment]  # streamed like S3's objects, not sent from local files

        def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
            inner = super().read(key, start, end)

            async def watched() -> AsyncIterator[bytes]:
                try:
                    async for chunk in inner:
                        yield chunk
                finally:
                    closed.append(True)

            return watched()

    from smith.domain.cache import Tenant

    service = CacheService(settings, Metadata(redis_client), Watched(tmp_path / "blobs"))
    who = Tenant(org="acme", repo="web", ref="refs/heads/main", read_refs=("refs/heads/main",))
    entry_id = await service.reserve(who, "k", VERSION)
    await service.write_part(entry_id, "single", chunks(b"abc"), 3)
    await service.assemble(entry_id, ["single"])
    await service.finalize(who, "k", VERSION, 3)
    download = await service.open(entry_id, None)
    await download.body.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
    whole = await service.open(entry_id, "bytes=1-")
    assert b"".join([c async for c in whole.body]) == b"bc"
    assert closed == [True, True]
