#!/usr/bin/env python3
"""actions/cache, natively, inside the guest: stdlib only, copied alone into the job's temp dir.

Speaks the v2 cache service (Twirp JSON: CreateCacheEntry, FinalizeCacheEntryUpload, GetCacheEntryDownloadURL;
blobs through the signed URL, one ``PUT`` with ``x-ms-blob-type: BlockBlob``) with the job's
``ACTIONS_RESULTS_URL`` and ``ACTIONS_RUNTIME_TOKEN``, the protocol Smith's cache server speaks. Entries are
gzip tarballs of the paths relative to the workspace; the version hashes the paths and the format, so entries of
other clients (zstd) never match.

    cache_client.py restore KEY PATHS RESTORE_KEYS   -> writes cache-hit, cache-primary-key, cache-matched-key
    cache_client.py save KEY PATHS                   (paths and restore keys: newline separated)
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request

SERVICE = "twirp/github.actions.results.api.v1.CacheService/"


def call(method: str, body: dict[str, object]) -> dict[str, object]:
    url = os.environ["ACTIONS_RESULTS_URL"].rstrip("/") + "/" + SERVICE + method
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["ACTIONS_RUNTIME_TOKEN"]},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return dict(json.loads(r.read()))


def version(paths: list[str]) -> str:
    return hashlib.sha256("|".join([*paths, "gzip", "smith-1"]).encode()).hexdigest()


def lines(text: str) -> list[str]:
    return [p.strip() for p in text.splitlines() if p.strip()]


def output(**values: str) -> None:
    with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as f:
        for k, v in values.items():
            f.write(f"{k}={v}\n")


def resolve(path: str) -> str:
    return os.path.expanduser(path)


def restore(key: str, paths: list[str], restore_keys: list[str]) -> None:
    answer = call("GetCacheEntryDownloadURL", {"key": key, "restore_keys": restore_keys, "version": version(paths)})
    matched = str(answer.get("matched_key") or "")
    if not answer.get("ok") or not matched:
        print(f"Cache not found for input keys: {', '.join([key, *restore_keys])}")
        output(**{"cache-hit": "false", "cache-primary-key": key, "cache-matched-key": ""})
        return
    with urllib.request.urlopen(str(answer["signed_download_url"]), timeout=300) as r:
        data = r.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            tar.extractall("/", filter="fully_trusted")  # noqa: S202 - absolute paths this client wrote
        except TypeError:
            tar.extractall("/")  # noqa: S202
    print(f"Cache restored from key: {matched} ({len(data)} bytes)")
    output(**{"cache-hit": str(matched == key).lower(), "cache-primary-key": key, "cache-matched-key": matched})


def save(key: str, paths: list[str]) -> None:
    buf = io.BytesIO()
    found = 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for pattern in paths:
            for path in sorted(glob.glob(resolve(pattern), recursive=True)):
                tar.add(os.path.abspath(path))
                found += 1
    if not found:
        print(f"Warning: Path Validation Error: Path(s) specified in the action for caching do(es) not exist: {paths}")
        return
    data = buf.getvalue()
    created = call("CreateCacheEntry", {"key": key, "version": version(paths)})
    if not created.get("ok"):
        print(f"Failed to save: {created.get('message') or 'the cache refused the entry (already exists?)'}")
        return
    req = urllib.request.Request(
        str(created["signed_upload_url"]), data=data, method="PUT", headers={"x-ms-blob-type": "BlockBlob"}
    )
    with urllib.request.urlopen(req, timeout=300):
        pass
    done = call("FinalizeCacheEntryUpload", {"key": key, "version": version(paths), "size_bytes": str(len(data))})
    print(f"Cache saved with key: {key} ({len(data)} bytes)" if done.get("ok") else f"Failed to save: {done}")


def main() -> int:
    action, key, paths = sys.argv[1], sys.argv[2], lines(sys.argv[3])
    if action == "restore":
        restore(key, paths, lines(sys.argv[4]) if len(sys.argv) > 4 else [])
    else:
        save(key, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
