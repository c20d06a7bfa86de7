"""Get a base image: download it (resumable, retried) or copy it, and verify its sha256 before anyone uses it.

A download goes to ``<dest>.partial``; an interrupted one (a dropped connection, a killed build) resumes from
the bytes it has with an HTTP ``Range`` request. A server that ignores the range (answers 200) is read from the
start again. Only a file whose sha256 matches is renamed to ``dest``: a mismatch deletes the partial file and
raises, so a tampered or truncated base never reaches an image.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from smith.errors import ConfigError, SmithError

# (bytes so far, total bytes or None when the server does not say)
OnBytes = Callable[[int, int | None], None]
CHUNK = 1 << 20


class ChecksumMismatch(SmithError):
    code = "checksum_mismatch"


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, sha256: str, what: str) -> None:
    got = sha256_file(path)
    if got != sha256:
        raise ChecksumMismatch(f"{what}: sha256 is {got}, the config says {sha256}: refused")


def fetch(
    source: str | Path,
    dest: Path,
    sha256: str,
    *,
    on_bytes: OnBytes | None = None,
    attempts: int = 5,
    backoff: float = 0.5,
    client: httpx.Client | None = None,
) -> Path:
    """``dest`` holding ``source`` (a URL or a path) verified against ``sha256``; reused if already there."""
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    if isinstance(source, Path) or "://" not in source or source.startswith("file://"):
        path = Path(str(source).removeprefix("file://"))
        if not path.is_file():
            raise ConfigError(f"base {path} does not exist")
        shutil.copyfile(path, partial)
        if on_bytes:
            size = partial.stat().st_size
            on_bytes(size, size)
    else:
        _download(source, partial, on_bytes, attempts, backoff, client)
    try:
        verify(partial, sha256, str(source))
    except ChecksumMismatch:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(dest)
    return dest


def _download(
    url: str, partial: Path, on_bytes: OnBytes | None, attempts: int, backoff: float, client: httpx.Client | None
) -> None:
    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0))
    try:
        for attempt in range(1, attempts + 1):
            try:
                _get(http, url, partial, on_bytes)
                return
            except (httpx.TransportError, _Retry) as exc:
                if attempt == attempts:
                    raise SmithError(
                        f"download of {url} failed after {attempts} attempts: {exc}", retryable=True
                    ) from exc
                time.sleep(backoff * 2 ** (attempt - 1))
    finally:
        if own:
            http.close()


class _Retry(Exception):
    pass


def _get(http: httpx.Client, url: str, partial: Path, on_bytes: OnBytes | None) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416:  # nothing left past what we have: the file is complete (or wrong: sha says)
            return
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retry(f"HTTP {resp.status_code}")
        if resp.status_code not in (200, 206):
            raise ConfigError(f"download of {url}: HTTP {resp.status_code}")
        if resp.status_code == 200:
            have = 0  # the server ignored the range: start over
        length = resp.headers.get("content-length")
        total = have + int(length) if length is not None else None
        with partial.open("ab" if have else "wb") as f:
            done = have
            if on_bytes:
                on_bytes(done, total)
            for chunk in resp.iter_bytes(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if on_bytes:
                    on_bytes(done, total)
        if total is not None and done < total:
            raise _Retry(f"connection closed after {done} of {total} bytes")
