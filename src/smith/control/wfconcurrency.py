"""``concurrency`` groups of built-in workflow runs, with GitHub's semantics: per repository and group at most one
run running and one pending; a newer pending run replaces the pending one (cancelled); with
``cancel-in-progress: true`` a new run cancels the running one (and the pending one) and runs.

A run with a group is created ``held``; every advance of a held run asks its group (``ENTER``, idempotent: asked
again it answers the same) and the run starts its jobs only on 'run'. A run that ends leaves its group
(``LEAVE``) before its end is recorded, and the pending run it lets in is advanced next; a crash in between is
mended by the sweep, whose advance of the still-held pending run asks the group again and gets 'run'. The group
records the runs it displaced (``x:<run>``), so a displaced run asking again is told 'cancelled'."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
