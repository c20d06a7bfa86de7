"""Every Redis key of the control plane, in one place. docs/ARCHITECTURE.md lists the same table.

================================  ======  ==========================================================
key                               type    what
================================  ======  ==========================================================
{smith}:delivery:<delivery_id>    string  outcome of a webhook delivery (JSON); dedupes redeliveries
{smith}:job:<job_id>              hash    one job record (state, class, repo, timestamps, lease)
{smith}:jobs                      zset    job ids by creation time: listing and retention
{smith}:q:<runner_class>          stream  queued jobs of one class; consumer group ``smith-agents``
{smith}:host:<agent_id>           string  a host's registration and last heartbeat (JSON), with TTL
{smith}:hosts                     zset    agent ids by last heartbeat time
{smith}:events                    stream  webhook events received, capped (audit trail)
{smith}:reply:<token>             string  a script's reply, kept 2 min so a replayed call answers the same
{smith}:github:scopes             hash    where runners were minted ("repo:o/r", "org:o") -> installation id
{smith}:github:pause              string  GitHub's API failed: no runner is minted while it lives (PX)
{smith}:github:failures           string  GitHub API failures in a row (for the pause's backoff), with TTL
{smith}:github:alarm              string  a 401/403/404 from GitHub (JSON), with TTL, until GitHub answers
{smith}:wfrun:<run_id>            hash    a built-in workflow run: workflow, event, its jobs' state/outputs
{smith}:wfruns                    zset    unfinished workflow runs by creation time: advanced on every sweep
{smith}:wftrigger:<delivery_id>   hash    a push / pull_request delivery for built-in execution, until its runs start
{smith}:wftriggers                zset    triggers not yet turned into runs, by time received (the trigger worker)
{smith}:wfgroup:<repo>:<group>    hash    a workflow concurrency group: running and pending run, x:<run> displaced
================================  ======  ==========================================================

Every key starts with the hash tag ``{smith}``, so on a Redis Cluster they all hash to one slot: scripts and
multi-key commands (XREADGROUP over several class streams) work there too, and every key a script touches is
passed in its KEYS. Keys written before the tag (prefix ``smith:``) are renamed once at start
(``smith.adapters.redis.migrate``). The cache server's keys (prefix ``{smith}:cache:``) are in
``smith/cache/keys.py``; the log pipeline uses no Redis. No other module spells a key
(``tests/unit/test_redis_keys.py``).
"""

from __future__ import annotations

# The hash tag: Redis Cluster hashes only the part in braces, so every Smith key lands in the same slot.
PREFIX = "{smith}:"
LEGACY_PREFIX = "smith:"  # before the hash tag; renamed at start
GROUP = "smith-agents"
REAPER = "smith-reaper"


def delivery(delivery_id: str) -> str:
    return f"{PREFIX}delivery:{delivery_id}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


JOBS = f"{PREFIX}jobs"


def queue(runner_class: str) -> str:
    return f"{PREFIX}q:{runner_class}"


def host(agent_id: str) -> str:
    return f"{PREFIX}host:{agent_id}"


HOSTS = f"{PREFIX}hosts"
EVENTS = f"{PREFIX}events"


def reply(token: str) -> str:
    """Where a replayable script keeps its reply (replay.py)."""
    return f"{PREFIX}reply:{token}"


# GitHub's state shared by the control plane's replicas (smith.adapters.redis.github).
GITHUB_SCOPES = f"{PREFIX}github:scopes"
GITHUB_PAUSE = f"{PREFIX}github:pause"
GITHUB_FAILURES = f"{PREFIX}github:failures"
GITHUB_ALARM = f"{PREFIX}github:alarm"


def wf_run(run_id: str) -> str:
    """A built-in workflow run's record (adapters/redis/wfruns.py)."""
    return f"{PREFIX}wfrun:{run_id}"


WF_RUNS = f"{PREFIX}wfruns"


def wf_trigger(delivery_id: str) -> str:
    """A delivery that may start built-in workflow runs, recorded before any git is read (wfruns.py)."""
    return f"{PREFIX}wftrigger:{delivery_id}"


WF_TRIGGERS = f"{PREFIX}wftriggers"


def wf_group(repo: str, group: str) -> str:
    """A ``concurrency`` group of a repository's workflow runs (names compare case-insensitively, as on GitHub)."""
    return f"{PREFIX}wfgroup:{repo.lower()}:{group.lower()}"
