"""Cache entries and the rules GitHub applies to them: key validation, scopes and the order of a lookup.

A cache entry belongs to an org and a repository and was written from one git ref (its *scope*). It is
matched by ``(key, version)``: ``version`` is the client's hash of the cached paths and compression method,
so an entry saved with ``zstd`` is never restored by a client that only speaks ``gzip``.

A lookup tries, for each readable scope in turn (the job's own ref, then the base ref of a pull request, then
the default branch): the exact primary key, then the newest entry whose key starts with the primary key, then
each restore key the same way (exact, then newest by prefix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from smith.domain.jobs import Job
from smith.errors import InvalidInput

MAX_KEY_LENGTH = 512
MAX_RESTORE_KEYS = 10
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,512}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class EntryState(StrEnum):
    RESERVED = "reserved"  # an upload is under way
    UPLOADED = "uploaded"  # the blob is complete, not yet finalized by the client (v2 only)
    FINAL = "final"  # immutable and readable


@dataclass(frozen=True)
class Tenant:
    """Who is asking, from a verified cache token: an org, optionally one repository, and readable refs."""

    org: str
    repo: str = ""
    ref: str = ""
    read_refs: tuple[str, ...] = ("",)
    admin: bool = False

    @property
    def write_scope(self) -> str:
        return self.ref


@dataclass(frozen=True)
class CacheEntry:
    id: int
    org: str
    repo: str
    scope: str
    key: str
    version: str
    state: EntryState
    size: int
    created_at: float
    last_access: float

    @property
    def blob_key(self) -> str:
        return blob_key(self.org, self.id)


def blob_key(org: str, entry_id: int) -> str:
    return f"entries/{org}/{entry_id}"


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def check_key(key: str, *, what: str = "key") -> str:
    """A cache key as the client sends it, by GitHub's rules: at most 512 characters, no commas (keys never become
    paths or object names here, so ``/``, ``\\`` and ``..`` are fine). Control characters are refused too."""
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if "," in key:
        raise InvalidInput(f"{what} cannot contain commas")
    if _has_control(key):
        raise InvalidInput(f"{what} cannot contain control characters")
    return key


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidInput("version must be 1-512 characters of letters, digits, '.', '_' or '-'")
    return version


def check_name(value: str, *, what: str) -> str:
    """An org or repository name as it appears in a token or an admin request."""
    if not _NAME.match(value) or ".." in value:
        raise InvalidInput(f"{what} must be 1-200 characters of letters, digits, '.', '_' or '-'")
    return value


def check_ref(ref: str) -> str:
    if len(ref) > 255 or _has_control(ref) or ".." in ref:
        raise InvalidInput("ref must be at most 255 characters, without '..' or control characters")
    return ref


def branch_ref(branch: str) -> str:
    """``main`` -> ``refs/heads/main``; a full ref stays as it is."""
    return branch if not branch or branch.startswith("refs/") else f"refs/heads/{branch}"


def job_cache_claims(job: Job) -> dict[str, Any]:
    """The claims of a job's cache token, in the form the cache server checks (``smith.cache.auth``).

    ``org`` is the job's org (or the repository's owner); ``repo`` is the repository's name inside it, without the
    owner (``Codertocat/Hello-World`` -> ``Hello-World``); ``ref`` is where the job's saves go (its branch);
    ``default_ref`` and, for a pull request, ``base_ref`` are also readable.
    """
    owner, _, name = job.repo.rpartition("/")
    claims: dict[str, Any] = {"org": owner or job.org or "local", "repo": name}
    for claim, branch in (("ref", job.head_branch), ("base_ref", job.base_ref), ("default_ref", job.default_branch)):
        if branch:
            claims[claim] = branch_ref(branch)
    return claims


def lookup_order(tenant: Tenant, key: str, restore_keys: list[str]) -> list[tuple[str, str, bool]]:
    """``(scope, key, prefix?)`` in the order GitHub tries them for a restore."""
    keys = [key, *[k for k in restore_keys if k]]
    if len(keys) > MAX_RESTORE_KEYS:
        raise InvalidInput(f"at most {MAX_RESTORE_KEYS} keys (primary + restore keys) per lookup")
    for k in keys:
        check_key(k)
    order: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for scope in tenant.read_refs:
        if scope in seen:
            continue
        seen.add(scope)
        for k in keys:
            order.append((scope, k, False))
            order.append((scope, k, True))
    return order
