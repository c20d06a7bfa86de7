"""Check runs as the fake GitHub keeps them (``POST /repos/{o}/{r}/check-runs``, ``PATCH .../{id}``).

The body schemas are checked by the fake against GitHub's description before these run (a field it does not
list, a status or conclusion outside its enums, a ``completed`` update without a conclusion). On top, what
GitHub refuses that the description only says in words: creating a run ``completed`` (or with
``completed_at``) without a ``conclusion`` (422), setting the conclusion ``stale`` (422, "only GitHub can set
this"), and any of it from an installation without the ``checks: write`` permission (403 "Resource not
accessible by integration", as for an App installed without it). A conclusion makes the status ``completed``.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

API = "https://api.github.com"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CheckRuns:
    """The check runs created, by id (each body as GitHub answers it, plus ``repo``)."""

    clock: Callable[[], float]
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(4))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.runs.values() if r["name"] == name]

    def create(self, repo: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``checks/create``."""
        problem = _refused(body, creating=True)
        if problem:
            return 422, {"message": problem}
        with self._lock:
            run_id = next(self._ids)
            run = {
                "id": run_id,
                "node_id": base64.b64encode(f"08:CheckRun{run_id}".encode()).decode(),
                "head_sha": body["head_sha"],
                "name": body["name"],
                "url": f"{API}/repos/{repo}/check-runs/{run_id}",
                "html_url": f"https://github.com/{repo}/runs/{run_id}",
                "details_url": body.get("details_url"),
                "status": "queued",
                "conclusion": None,
                "started_at": _iso(self.clock()),
                "completed_at": None,
                "external_id": body.get("external_id", ""),
                "check_suite": {"id": 5},
                "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                           "annotations_url": f"{API}/repos/{repo}/check-runs/{run_id}/annotations"},
                "app": None,
                "pull_requests": [],
                "repo": repo,
            }  # fmt: skip
            _apply(run, body, self.clock())
            self.runs[run_id] = run
            return 201, _public(run)

    def update(self, repo: str, run_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``checks/update``: 404 for a run of another repository."""
        problem = _refused(body, creating=False)
        if problem:
            return 422, {"message": problem}
        with self._lock:
            run = self.runs.get(run_id)
            if run is None or run["repo"] != repo:
                return 404, {"message": "Not Found"}
            _apply(run, body, self.clock())
            return 200, _public(run)


def _refused(body: dict[str, Any], creating: bool) -> str:
    if body.get("conclusion") == "stale":
        return "Invalid request. Only GitHub can set the conclusion 'stale'."
    completing = body.get("status") == "completed" or "completed_at" in body
    if creating and completing and not body.get("conclusion"):
        return "Invalid request. 'conclusion' wasn't supplied."
    return ""


def _apply(run: dict[str, Any], body: dict[str, Any], now: float) -> None:
    for key in ("name", "details_url", "external_id", "started_at", "completed_at"):
        if key in body:
            run[key] = body[key]
    if "output" in body:
        out = body["output"]
        run["output"].update({k: out.get(k) for k in ("title", "summary", "text") if k in out})
    if "status" in body:
        run["status"] = body["status"]
    if body.get("conclusion"):
        run["conclusion"] = body["conclusion"]
        run["status"] = "completed"
        run["completed_at"] = body.get("completed_at") or run["completed_at"] or _iso(now)


def _public(run: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps({k: v for k, v in run.items() if k != "repo"}))
    return out
