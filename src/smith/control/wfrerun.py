"""An operator's cancel and re-run of a whole built-in workflow run (``POST /v1/workflows/runs/{id}/cancel`` and
``/rerun``; ``smith jobs cancel-run`` / ``smith jobs rerun``).

Cancel marks the run ``cancelled`` and advances it: jobs not started end ``cancelled`` without a Smith job, its
Smith jobs are cancelled (queued ones at once, running ones through their agent's heartbeat) and the run ends
``cancelled`` once they have (commit status ``error``). Re-run (of a finished run, as GitHub allows) starts the
run's next attempt: a new run of the same workflow text at the same commit with the same event, through the same
concurrency group (all its jobs, or only the failed ones and those downstream); asked again, it answers the same
attempt."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson

from smith.errors import Conflict, NotFound
from smith.workflows.parser import parse

if TYPE_CHECKING:
    from smith.control.workflows import WorkflowRuns

KEPT = (
    "repo", "event_name", "event", "sha", "ref", "file", "workflow", "name", "inputs", "installation_id", "head_sha",
    "merge_base", "merge_head", "merge_time", "group", "cancel_in_progress",
)  # fmt: skip


async def cancel(wr: WorkflowRuns, run_id: str, reason: str) -> None:
    rec = await wr.runs.get(run_id)
    if not rec:
        raise NotFound(f"workflow run {run_id} not found")
    if rec.get("state") == "completed":
        raise Conflict(f"workflow run {run_id} already finished ({rec.get('conclusion')})")
    if not rec.get("cancelled"):
        await wr.runs.mark(run_id, {"cancelled": reason})
    await wr.advance(run_id)


async def rerun(wr: WorkflowRuns, run_id: str, failed_only: bool = False) -> str:
    """The id of the run's next attempt (started now, or by an earlier call). ``failed_only``: GitHub's "Re-run
    failed jobs": the jobs that succeeded (or were skipped) with all their needs kept are carried over, done,
    with their outputs; the others (failed, cancelled, and every job downstream of one) run again."""
    rec = await wr.runs.get(run_id)
    if not rec:
        raise NotFound(f"workflow run {run_id} not found")
    if rec.get("state") != "completed":
        raise Conflict(f"workflow run {run_id} is still running: cancel it first or wait for its end")
    attempt = int(rec.get("attempt") or 1) + 1
    new_id = hashlib.sha256(f"{run_id}\0{attempt}".encode()).hexdigest()[:16]
    fields = {k: rec[k] for k in KEPT if k in rec}
    fields |= {"attempt": str(attempt), "rerun_of": run_id, "first_run": rec.get("first_run") or run_id}
    if rec.get("group"):
        fields["held"] = "1"
    if failed_only:
        fields |= kept_jobs(rec)
    if await wr.runs.create(new_id, fields):
        await wr.started(new_id, fields)
    return new_id


def kept_jobs(rec: dict[str, str]) -> dict[str, str]:
    """The run fields carrying over, done, the jobs a re-run of the failed jobs keeps."""
    wf = parse(rec["workflow"], rec["file"])
    kept: dict[str, str] = {}
    for stage in wf.stages():
        for jid in stage:
            done = orjson.loads(rec.get(f"r:{jid}") or "{}")
            if done.get("result") in ("success", "skipped") and all(n in kept for n in wf.jobs[jid].needs):
                kept[jid] = rec[f"r:{jid}"]
    return {k: v for jid, raw in kept.items() for k, v in ((f"j:{jid}", "done"), (f"r:{jid}", raw))}
