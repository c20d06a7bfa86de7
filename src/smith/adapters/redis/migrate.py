"""Keys written before the ``{smith}`` hash tag, renamed once at start.

Smith's keys used to start with ``smith:``; they now start with ``{smith}:`` (keys.py) so that on a Redis Cluster
they all hash to one slot. A server that still holds old keys (a standalone or Sentinel deployment upgraded in
place) has them renamed here, at the start of the control plane and the cache server: ``RENAME`` keeps a key's
value, TTL, stream entries and consumer groups, so queued jobs, leases and cache entries carry over. A key whose
new name already exists is left as it is and logged. A cluster never held old keys (its scripts could not run).
Stop every replica of the older version before starting this one: an old replica would go on writing old keys.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rexc

from smith.adapters.redis import keys
from smith.logging import get_logger

log = get_logger("smith.redis.migrate")


async def is_cluster(r: Any) -> bool:
    info = await r.info("cluster")
    if isinstance(info, dict) and "cluster_enabled" not in info:  # RedisCluster: one reply per node
        info = next(iter(info.values()), {})
    return str(info.get("cluster_enabled", "0")) == "1"


async def rename_legacy_keys(r: Any) -> int:
    """Rename every ``smith:*`` key to its ``{smith}:*`` name; returns how many were renamed."""
    if await is_cluster(r):
        return 0
    renamed = kept = 0
    async for key in r.scan_iter(match=f"{keys.LEGACY_PREFIX}*", count=1000):
        new = keys.PREFIX + key[len(keys.LEGACY_PREFIX) :]
        try:
            if await r.renamenx(key, new):
                renamed += 1
            else:
                kept += 1
        except rexc.ResponseError:  # expired between SCAN and RENAMENX
            continue
    if renamed or kept:
        log.info("renamed keys to the {smith} hash tag", renamed=renamed, left_as_new_name_exists=kept)
    return renamed
