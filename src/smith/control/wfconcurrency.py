"""``concurrency`` groups of built-in workflow runs, with GitHub's semantics: per repository and group at most one
run running and one pending; a newer pending run replaces the pending one (cancelled); with
``cancel-in-progress: true`` a new run cancels the running one (and the pending one) and runs. A job's own
``concurrency`` does the same per job instance (members are Smith job ids, in the same namespace of groups).

A run with a group is created ``held``; every advance of a held run asks its group (``ENTER``, idempotent: asked
again it answers the same) and the run starts its jobs only on 'run'. A run that ends leaves its group
(``LEAVE``) before its end is recorded, and the pending run it lets in is advanced next; a crash in between is
mended by the sweep, whose advance of the still-held pending run asks the group again and gets 'run'. The group
records the runs it displaced (``x:<run>``), so a displaced run asking again is told 'cancelled'."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from smith.errors import Conflict, NotFound
from smith.logging import get_logger

if TYPE_CHECKING:
    from smith.control.workflows import WorkflowRuns

log = get_logger("smith.control.wfconcurrency")


async def admit(wr: WorkflowRuns, run_id: str, rec: dict[str, str]) -> tuple[bool, list[str]]:
    """Whether held run ``run_id`` may go on now (to run, or to finish as cancelled), and the runs it displaced
    (marked cancelled; the caller advances them)."""
    group = rec["group"]
    answer, displaced = await wr.runs.enter(rec["repo"], group, run_id, rec.get("cancel_in_progress") == "1")
    for other in displaced:
        await wr.runs.mark(other, {"cancelled": f"a newer run of concurrency group {group!r} replaced it"})
        log.info("workflow run cancelled by its concurrency group", run=other, group=group, by=run_id)
    if answer == "wait":
        return False, displaced
    if answer == "cancelled":  # displaced while it waited (its mark may have been lost in a crash)
        await wr.runs.mark(run_id, {"cancelled": f"a newer run of concurrency group {group!r} replaced it"})
    await wr.runs.mark(run_id, {"held": ""})
    return True, displaced


async def leave(wr: WorkflowRuns, run_id: str, rec: dict[str, str]) -> list[str]:
    """A run that ends leaves its group: the pending run that may run now (to advance), if any."""
    if not rec.get("group"):
        return []
    nxt = await wr.runs.leave(rec["repo"], rec["group"], run_id)
    return [nxt] if nxt else []


async def admit_instance(
    wr: WorkflowRuns, run_id: str, rec: dict[str, str], smith_id: str, spec: dict[str, Any]
) -> bool:
    """Whether job instance ``smith_id`` (its job has a ``concurrency`` group) may be queued now. Asked again on
    every advance while it waits; told 'cancelled', its instance ends cancelled."""
    group = spec["group"]
    answer, displaced = await wr.runs.enter(rec["repo"], group, smith_id, bool(spec.get("cancel_in_progress")))
    why = f"a newer job of concurrency group {group!r} replaced it"
    for other in displaced:
        log.info("workflow job cancelled by its concurrency group", job=other, group=group, by=smith_id)
        if other.startswith("wf-"):  # queued or running: cancelled; waiting: told 'cancelled' when it asks again
            with contextlib.suppress(Conflict, NotFound):
                await wr.jobs.cancel(other, why)
        else:  # a run in the same group
            await wr.runs.mark(other, {"cancelled": why})
            wr.woken.append(other)
    if answer == "cancelled":
        await wr.instance_result(run_id, rec, smith_id, spec, "cancelled", {}, why)
    return answer == "run"


async def leave_instance(wr: WorkflowRuns, rec: dict[str, str], smith_id: str, spec: dict[str, Any]) -> None:
    """A job instance that ended leaves its group; the run of the one let in is advanced next."""
    nxt = await wr.runs.leave(rec["repo"], spec["group"], smith_id)
    if nxt:
        wr.woken.append(nxt[3:19] if nxt.startswith("wf-") else nxt)
