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


@dataclass(frozen=True)
class RunOrigin:
    """What GitHub says about a job's workflow run (``GET /repos/{o}/{r}/actions/runs/{id}``): the event that
    started it, and where its code comes from. The ``workflow_job`` webhook says neither."""

    event: str
    repo: str  # the run's repository, owner/name
    head_repo: str  # the repository its head commit comes from: a fork's full name for a fork's pull request
    head_branch: str = ""
    pull_number: int = 0  # for a pull_request* run: its pull request (GitHub lists none for a fork's)
    base_branch: str = ""  # that pull request's base branch

    @property
    def from_fork(self) -> bool:
        return bool(self.head_repo) and self.head_repo.lower() != self.repo.lower()


def run_cache_claims(job: Job, origin: RunOrigin | None) -> dict[str, Any]:
    """A GitHub job's cache claims once its run is known (``origin``; None: GitHub could not say).

    * a fork's run (its head repository is not the run's): writes go to ``refs/smith/forks/<fork>/<branch>``,
      which no branch or pull request of the repository can be, so a fork's ``main`` never writes into ``main``;
      it reads the default branch (and the base, if GitHub named its pull request);
    * a pull_request* run with its pull request: ``refs/pull/N/merge``, reading the base branch and the default;
    * a pull_request* run without one, or no answer from GitHub: a scope of the run's own
      (``refs/smith/runs/<run_id>``), reading what it read before (its branch, the default);
    * anything else (a push, a schedule...): its branch, as ``job_cache_claims``.
    """
    claims = job_cache_claims(job)
    head = claims.pop("ref", "")
    own = f"refs/smith/runs/{job.run_id}" if job.run_id else f"refs/smith/jobs/{job.id}"
    if origin is None:
        return _scoped(claims, own, head)
    if origin.from_fork:
        branch = origin.head_branch or job.head_branch
        return _scoped(claims, f"refs/smith/forks/{origin.head_repo}/{branch}", branch_ref(origin.base_branch))
    if origin.event.startswith("pull_request"):
        if origin.pull_number > 0:
            return _scoped(claims, f"refs/pull/{origin.pull_number}/merge", branch_ref(origin.base_branch))
        return _scoped(claims, own, head)
    return {**claims, "ref": head} if head else claims


def _scoped(claims: dict[str, Any], ref: str, readable: str) -> dict[str, Any]:
    out = {k: v for k, v in claims.items() if k != "base_ref"}
    out["ref"] = ref
    if readable and readable not in (ref, out.get("default_ref")):
        out["base_ref"] = readable
    return out


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
