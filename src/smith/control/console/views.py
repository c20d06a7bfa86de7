"""Jinja2 environment and the small formatting helpers the console's templates use."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from smith.wire.agent import JobView

HERE = Path(__file__).parent
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def job_duration(job: JobView, now: float | None = None) -> str:
    """How long it ran (started to finished, or to now), or how long it has waited if it has not started."""
    now = time.time() if now is None else now
    if job.started_at:
        return duration((job.finished_at or now) - job.started_at)
    if job.state in FINAL:
        return duration((job.finished_at or now) - job.created_at)
    return "waiting " + duration(now - job.created_at)


def size(n: float | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "-"


def environment() -> Environment:
    # Autoescape everything: job names, labels, repos and log lines come from webhooks and guests.
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, job_duration=job_duration, size=size, when=when)
    env.globals["final_states"] = FINAL
    return env


def hit_rate(usage: dict[str, Any]) -> str:
    looked = int(usage.get("hits", 0)) + int(usage.get("misses", 0))
    return f"{100 * int(usage.get('hits', 0)) / looked:.0f}%" if looked else "-"
