"""What ``smith report`` computes from the services' answers: pure functions over plain dicts (JSON-ready)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FINAL = ("succeeded", "failed", "cancelled")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, -(-len(s) * p // 100))  # ceil(n * p / 100), at least 1
    return float(s[int(rank) - 1])


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def queue_wait(job: Mapping[str, Any]) -> float | None:
    """Webhook accepted (created) -> VM running (started), as the queue-wait metric counts it."""
    if job.get("started_at") is None or not job.get("created_at"):
        return None
    return max(0.0, float(job["started_at"]) - float(job["created_at"]))


def duration(job: Mapping[str, Any]) -> float | None:
    """Running -> final state."""
    if job.get("started_at") is None or job.get("finished_at") is None:
        return None
    return max(0.0, float(job["finished_at"]) - float(job["started_at"]))


def jobs_report(jobs: Sequence[Mapping[str, Any]], queue: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Jobs by state and class, queue wait and duration percentiles (overall and per class), top failure
    reasons, jobs per host, and the queue's health when given."""
    waits = [w for j in jobs if (w := queue_wait(j)) is not None]
    durations = [d for j in jobs if (d := duration(j)) is not None]
    by_class: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for j in jobs:
        by_class[str(j.get("runner_class", ""))].append(j)
    failures = Counter(_reason(j) for j in jobs if j.get("state") == "failed")
    hosts: dict[str, Counter[str]] = defaultdict(Counter)
    for j in jobs:
        if j.get("agent_id"):
            hosts[str(j["agent_id"])][str(j.get("state"))] += 1
    out: dict[str, Any] = {
        "jobs": len(jobs),
        "by_state": dict(Counter(str(j.get("state")) for j in jobs)),
        "queue_wait_seconds": spread(waits),
        "duration_seconds": spread(durations),
        "by_class": {
            cls: {
                "jobs": len(js),
                "by_state": dict(Counter(str(j.get("state")) for j in js)),
                "queue_wait_seconds": spread([w for j in js if (w := queue_wait(j)) is not None]),
                "duration_seconds": spread([d for j in js if (d := duration(j)) is not None]),
            }
            for cls, js in sorted(by_class.items())
        },
        "top_failure_reasons": [{"reason": r, "jobs": n} for r, n in failures.most_common(10)],
        "hosts": {h: {"jobs": sum(c.values()), **dict(c)} for h, c in sorted(hosts.items())},
    }
    if queue is not None:
        out["queue"] = {
            "queued_total": queue.get("queued_total"),
            "leases_in_flight": queue.get("leases_in_flight"),
            "oldest_queued_age_seconds": queue.get("oldest_queued_age_seconds"),
            "hosts_alive": queue.get("hosts_alive"),
            "classes": queue.get("classes", {}),
        }
    return out


def _reason(job: Mapping[str, Any]) -> str:
    reason = str(job.get("reason") or "").strip() or "(no reason)"
    return reason if len(reason) <= 120 else reason[:117] + "..."


def cache_report(orgs: Mapping[str, Mapping[str, Any]], limit: int = 10) -> dict[str, Any]:
    """Hit rate overall and per org, top orgs by bytes stored."""
    hits = sum(int(u.get("hits", 0)) for u in orgs.values())
    misses = sum(int(u.get("misses", 0)) for u in orgs.values())
    top = sorted(orgs.items(), key=lambda kv: int(kv[1].get("bytes", 0)), reverse=True)[:limit]
    return {
        "orgs": len(orgs),
        "bytes": sum(int(u.get("bytes", 0)) for u in orgs.values()),
        "entries": sum(int(u.get("entries", 0)) for u in orgs.values()),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "top_orgs": [
            {
                "org": name,
                "bytes": int(u.get("bytes", 0)),
                "entries": int(u.get("entries", 0)),
                "hit_rate": _rate(u),
            }
            for name, u in top
        ],
    }


def _rate(u: Mapping[str, Any]) -> float | None:
    h, m = int(u.get("hits", 0)), int(u.get("misses", 0))
    return h / (h + m) if h + m else None


def logs_report(volume: Iterable[Mapping[str, Any]], stats: Mapping[str, Any] | None) -> dict[str, Any]:
    jobs = list(volume)
    return {
        "jobs": jobs,
        "lines": sum(int(j.get("lines", 0)) for j in jobs),
        "bytes": sum(int(j.get("bytes", 0)) for j in jobs),
        "pipeline": dict(stats) if stats is not None else None,
    }
