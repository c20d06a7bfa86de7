"""Every Redis key the cache server uses (prefix ``{smith}:cache:``: the control plane's hash tag, so one Redis
Cluster slot holds them all; every key a script touches is in its KEYS). docs/parts/cache.md lists the same table.

========================================  ======  ===================================================================
key                                       type    what
========================================  ======  ===================================================================
{smith}:cache:e:<id>                      hash    one entry: org, repo, scope, key, version, state, size, times
{smith}:cache:p:<id>                      hash    parts received for an unfinished upload: part name -> bytes
{smith}:cache:c:<id>                      hash    parts claimed (being written or written): part name -> bytes; the
                                                  entry's ``claimed`` field is their sum
{smith}:cache:k:<org>:<slot>              hash    cache key -> entry id, for one (repo, scope, version) ``slot``;
                                                  HSETNX here is the reservation: one writer per key wins
{smith}:cache:x:<org>:<slot>              zset    finalized keys of the slot (score 0): prefix search by ZRANGEBYLEX
{smith}:cache:lru:<org>                   zset    finalized entry ids by last access time: LRU and age eviction
{smith}:cache:uploads                     zset    unfinished entry ids by start time: cleanup of abandoned uploads
{smith}:cache:u:<org>                     hash    usage: bytes, entries, hits, misses, last_access
{smith}:cache:orgs                        set     orgs that have (had) entries
{smith}:cache:gc                          set     blob keys whose deletion failed; retried by the janitor
{smith}:cache:reply:<token>               string  a script's reply, kept 2 min so a replayed call answers the same
========================================  ======  ===================================================================

``slot`` is a hash of (repo, scope, version), so refs and repository names need no escaping.
"""

from __future__ import annotations

import hashlib

PREFIX = "{smith}:cache:"  # one hash tag for every key: one Redis Cluster slot
UPLOADS = f"{PREFIX}uploads"
ORGS = f"{PREFIX}orgs"
GC = f"{PREFIX}gc"


def slot(repo: str, scope: str, version: str) -> str:
    return hashlib.sha256(f"{repo}\0{scope}\0{version}".encode()).hexdigest()[:32]


def reply(token: str) -> str:
    """Where a replayable script keeps its reply (smith.adapters.redis.replay)."""
    return f"{PREFIX}reply:{token}"


def entry(entry_id: int) -> str:
    return f"{PREFIX}e:{entry_id}"


def parts(entry_id: int) -> str:
    return f"{PREFIX}p:{entry_id}"


def claims(entry_id: int) -> str:
    return f"{PREFIX}c:{entry_id}"


def index(org: str, repo: str, scope: str, version: str) -> str:
    return f"{PREFIX}k:{org}:{slot(repo, scope, version)}"


def finals(org: str, repo: str, scope: str, version: str) -> str:
    return f"{PREFIX}x:{org}:{slot(repo, scope, version)}"


LRU = f"{PREFIX}lru:"  # + org
USAGE = f"{PREFIX}u:"  # + org


def lru(org: str) -> str:
    return f"{LRU}{org}"


def usage(org: str) -> str:
    return f"{USAGE}{org}"
