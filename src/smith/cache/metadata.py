"""Cache metadata in Redis: entries, the key index, reservations, usage and LRU order.

State changes that touch several keys (reserve, finalize, delete) are Lua scripts, so a crash or a race never
leaves the index pointing at half an entry. Redis errors become ``smith.errors`` (``Unavailable``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from smith.adapters.redis import connect, migrate
from smith.adapters.redis.replay import replayable, token
from smith.cache import keys as K
from smith.domain.cache import CacheEntry, EntryState, Tenant

_RESERVE = replayable("""
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, 0} end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0, redis.call('HGET', KEYS[1], ARGV[1])}
end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'org', ARGV[3], 'repo', ARGV[4], 'scope', ARGV[5],
  'version', ARGV[6], 'key', ARGV[1], 'state', 'reserved', 'size', 0, 'declared', ARGV[7],
  'created', ARGV[8], 'access', ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])
return {1, ARGV[2]}
""")

_MARK_UPLOADED = replayable("""
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'reserved' then return st or 'missing' end
redis.call('HSET', KEYS[1], 'state', 'uploaded', 'size', ARGV[1])
return 'ok'
""")

# KEYS: entry, uploads, parts, orgs, claims, the slot's finals, the org's LRU and usage, reply. Every key is
# declared (Redis Cluster, Dragonfly); the caller names the org's keys from the entry it read, and the script
# checks the entry still belongs to that org (ARGV[4]).
_FINALIZE = replayable("""
local f = redis.call('HMGET', KEYS[1], 'state', 'org', 'key')
local st = f[1]
if st ~= 'reserved' and st ~= 'uploaded' then return st or 'missing' end
if f[2] ~= ARGV[4] then return 'missing' end
redis.call('HSET', KEYS[1], 'state', 'final', 'size', ARGV[2], 'access', ARGV[3])
redis.call('ZADD', KEYS[6], 0, f[3])
redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'bytes', ARGV[2])
redis.call('HINCRBY', KEYS[8], 'entries', 1)
redis.call('SADD', KEYS[4], f[2])
redis.call('DEL', KEYS[3], KEYS[5])
return 'ok'
""")

# KEYS: entry, parts, uploads, claims, the slot's index and finals, the org's usage and LRU, reply (all declared,
# named by the caller from the entry it read; ARGV[2] is that entry's org, checked here).
_DELETE = replayable("""
local f = redis.call('HMGET', KEYS[1], 'org', 'key', 'state', 'size')
if not f[1] or f[1] ~= ARGV[2] then return false end
if redis.call('HGET', KEYS[5], f[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[5], f[2])
  redis.call('ZREM', KEYS[6], f[2])
end
if f[3] == 'final' then
  redis.call('HINCRBY', KEYS[7], 'bytes', -tonumber(f[4]))
  redis.call('HINCRBY', KEYS[7], 'entries', -1)
  redis.call('ZREM', KEYS[8], ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
return {f[1], f[3]}
""")

# Claim room for one part before its bytes are written: the entry must still be reserved, the claimed total must
# stay within the limit (concurrent writers cannot overshoot it), and with ARGV[5] == '1' (legacy chunks, named by
# their offset) the byte range may not overlap a claimed one, so no chunk replaces an earlier one. A part name
# claimed again (a retried block) replaces its own claim.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'state') ~= 'reserved' then return 'state' end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if ARGV[5] == '1' then
  if old >= 0 then return 'overlap' end
  local start = tonumber(ARGV[1])
  local stop = start + tonumber(ARGV[2])
  local claims = redis.call('HGETALL', KEYS[2])
  for i = 1, #claims, 2 do
    local s = tonumber(claims[i])
    if s < stop and start < s + tonumber(claims[i + 1]) then return 'overlap' end
  end
end
if old < 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 'parts' end
local total = tonumber(redis.call('HGET', KEYS[1], 'claimed') or '0') - math.max(old, 0) + tonumber(ARGV[2])
if total > tonumber(ARGV[3]) then return 'size' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'claimed', total)
return 'ok'
"""

# Give a claim back after its write failed (only if it is still the same claim).
_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'claimed', -tonumber(ARGV[2])) end
return 1
"""

# Entry ids are random below 2**53 (the v1 client keeps them in a JavaScript number), so they cannot be guessed.
MAX_ENTRY_ID = 2**53 - 1

# The largest code point: its UTF-8 encoding sorts after every key that starts with a given prefix.
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class Reservation:
    won: bool
    entry_id: int


def _entry(raw: dict[str, str]) -> CacheEntry | None:
    if not raw or "id" not in raw:
        return None
    return CacheEntry(
        id=int(raw["id"]),
        org=raw["org"],
        repo=raw["repo"],
        scope=raw["scope"],
        key=raw["key"],
        version=raw["version"],
        state=EntryState(raw["state"]),
        size=int(raw.get("size") or 0),
        created_at=float(raw["created"]),
        last_access=float(raw.get("access") or raw["created"]),
    )


class Metadata:
    def __init__(self, client: aioredis.Redis) -> None:
        self.r: Any = client  # decode_responses=True: every reply is str
        self._reserve = client.register_script(_RESERVE)
        self._mark = client.register_script(_MARK_UPLOADED)
        self._finalize = client.register_script(_FINALIZE)
        self._delete = client.register_script(_DELETE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    async def ping(self) -> None:
        await connect.call(self.r.ping)

    async def migrate(self) -> int:
        """Rename keys written before the ``{smith}`` hash tag (``smith.adapters.redis.migrate``)."""
        async with connect.errors():
            return await migrate.rename_legacy_keys(self.r)

    async def get(self, entry_id: int) -> CacheEntry | None:
        async with connect.errors():
            return _entry(await self.r.hgetall(K.entry(entry_id)))

    async def declared_size(self, entry_id: int) -> int:
        async with connect.errors():
            return int(await self.r.hget(K.entry(entry_id), "declared") or 0)

    async def reserve(self, tenant: Tenant, key: str, version: str, declared: int) -> Reservation:
        scope = tenant.write_scope
        async with connect.errors():
            while True:
                entry_id = secrets.randbelow(MAX_ENTRY_ID) + 1
                won, existing = await self._reserve(
                    keys=[
                        K.index(tenant.org, tenant.repo, scope, version),
                        K.entry(entry_id),
                        K.UPLOADS,
                        K.reply(token()),
                    ],
                    args=[key, entry_id, tenant.org, tenant.repo, scope, version, declared, time.time()],
                )
                if int(won) != 2:  # 2: the random id is taken; draw again
                    return Reservation(bool(int(won)), int(existing))

    async def find(self, tenant: Tenant, scope: str, version: str, key: str) -> CacheEntry | None:
        """The entry (any state) that holds ``key`` in one scope, if any."""
        async with connect.errors():
            entry_id = await self.r.hget(K.index(tenant.org, tenant.repo, scope, version), key)
            if entry_id is None:
                return None
            return _entry(await self.r.hgetall(K.entry(int(entry_id))))

    async def newest_with_prefix(self, tenant: Tenant, scope: str, version: str, prefix: str) -> CacheEntry | None:
        fk = K.finals(tenant.org, tenant.repo, scope, version)
        ik = K.index(tenant.org, tenant.repo, scope, version)
        async with connect.errors():
            candidates = await self.r.zrangebylex(fk, f"[{prefix}", f"[{prefix}{_TOP}", start=0, num=1000)
            if not candidates:
                return None
            ids = [i for i in await self.r.hmget(ik, candidates) if i is not None]
            pipe = self.r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(K.entry(int(i)))
            entries = [e for e in map(_entry, await pipe.execute()) if e and e.state is EntryState.FINAL]
        return max(entries, key=lambda e: (e.created_at, e.id), default=None)

    async def claim_part(self, entry_id: int, part: str, size: int, *, limit: int, max_parts: int, ranged: bool) -> str:
        """Claim room for a part before writing it: ``ok``, or why not (``state``, ``size``, ``parts``, ``overlap``)."""
        async with connect.errors():
            return str(
                await self._claim(
                    keys=[K.entry(entry_id), K.claims(entry_id)],
                    args=[part, size, limit, max_parts, "1" if ranged else "0"],
                )
            )

    async def release_part(self, entry_id: int, part: str, size: int) -> None:
        async with connect.errors():
            await self._release(keys=[K.entry(entry_id), K.claims(entry_id), K.parts(entry_id)], args=[part, size])

    async def add_part(self, entry_id: int, part: str, size: int) -> None:
        async with connect.errors():
            await self.r.hset(K.parts(entry_id), part, size)

    async def parts(self, entry_id: int) -> dict[str, int]:
        async with connect.errors():
            raw = await self.r.hgetall(K.parts(entry_id))
        return {k: int(v) for k, v in raw.items()}

    async def mark_uploaded(self, entry_id: int, size: int) -> str:
        async with connect.errors():
            return str(await self._mark(keys=[K.entry(entry_id), K.reply(token())], args=[size]))

    async def _slot_of(self, entry_id: int) -> tuple[str, str, str] | None:
        """(org, index key, finals key) of an entry, read before a script that must declare them; None if gone.
        These fields never change after the reservation."""
        org, repo, scope, version = await self.r.hmget(K.entry(entry_id), "org", "repo", "scope", "version")
        if org is None:
            return None
        return org, K.index(org, repo, scope, version), K.finals(org, repo, scope, version)

    async def finalize(self, entry_id: int, size: int) -> str:
        async with connect.errors():
            slot = await self._slot_of(entry_id)
            if slot is None:
                return "missing"
            org, _, finals = slot
            return str(
                await self._finalize(
                    keys=[
                        K.entry(entry_id),
                        K.UPLOADS,
                        K.parts(entry_id),
                        K.ORGS,
                        K.claims(entry_id),
                        finals,
                        K.lru(org),
                        K.usage(org),
                        K.reply(token()),
                    ],
                    args=[entry_id, size, time.time(), org],
                )
            )

    async def delete(self, entry_id: int) -> tuple[str, EntryState] | None:
        """Drop an entry's metadata; returns (org, state it was in) so the caller can drop its bytes."""
        async with connect.errors():
            slot = await self._slot_of(entry_id)
            if slot is None:
                return None
            org, index, finals = slot
            out = await self._delete(
                keys=[
                    K.entry(entry_id),
                    K.parts(entry_id),
                    K.UPLOADS,
                    K.claims(entry_id),
                    index,
                    finals,
                    K.usage(org),
                    K.lru(org),
                    K.reply(token()),
                ],
                args=[entry_id, org],
            )
        if not out:
            return None
        return str(out[0]), EntryState(out[1])

    async def touch(self, entry: CacheEntry) -> None:
        now = time.time()
        async with connect.errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(K.entry(entry.id), "access", now)
            pipe.zadd(K.lru(entry.org), {str(entry.id): now}, xx=True)
            await pipe.execute()

    async def count(self, org: str, field: str) -> None:
        async with connect.errors():
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(K.usage(org), field, 1)
            pipe.hset(K.usage(org), "last_access", time.time())
            pipe.sadd(K.ORGS, org)
            await pipe.execute()

    async def usage(self, org: str | None) -> dict[str, dict[str, Any]]:
        async with connect.errors():
            orgs = [org] if org else sorted(await self.r.smembers(K.ORGS))
            out: dict[str, dict[str, Any]] = {}
            for o in orgs:
                raw = await self.r.hgetall(K.usage(o))
                out[o] = {
                    "bytes": int(raw.get("bytes", 0)),
                    "entries": int(raw.get("entries", 0)),
                    "hits": int(raw.get("hits", 0)),
                    "misses": int(raw.get("misses", 0)),
                    "last_access": float(raw["last_access"]) if raw.get("last_access") else None,
                }
        return out

    async def orgs(self) -> list[str]:
        async with connect.errors():
            return sorted(await self.r.smembers(K.ORGS))

    async def org_bytes(self, org: str) -> int:
        async with connect.errors():
            return int(await self.r.hget(K.usage(org), "bytes") or 0)

    async def least_recent(self, org: str, count: int) -> list[int]:
        async with connect.errors():
            return [int(i) for i in await self.r.zrange(K.lru(org), 0, count - 1)]

    async def unused_since(self, org: str, cutoff: float) -> list[int]:
        async with connect.errors():
            return [int(i) for i in await self.r.zrangebyscore(K.lru(org), "-inf", cutoff, start=0, num=1000)]

    async def entries_of(self, org: str) -> list[CacheEntry]:
        """Every entry of an org: finalized ones and uploads in progress."""
        async with connect.errors():
            ids = [int(i) for i in await self.r.zrange(K.lru(org), 0, -1)]
            pending = [int(i) for i in await self.r.zrange(K.UPLOADS, 0, -1)]
            pipe = self.r.pipeline(transaction=False)
            for i in ids + pending:
                pipe.hgetall(K.entry(i))
            entries = [e for e in map(_entry, await pipe.execute()) if e and e.org == org]
        return entries

    async def stale_uploads(self, cutoff: float) -> list[int]:
        async with connect.errors():
            return [int(i) for i in await self.r.zrangebyscore(K.UPLOADS, "-inf", cutoff, start=0, num=1000)]

    async def add_gc(self, blob_key: str) -> None:
        async with connect.errors():
            await self.r.sadd(K.GC, blob_key)

    async def take_gc(self, count: int = 100) -> list[str]:
        async with connect.errors():
            got = await self.r.spop(K.GC, count)
        return list(got or [])
