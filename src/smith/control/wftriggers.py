"""The trigger worker: turns recorded push / pull_request deliveries into workflow runs, outside the request.

The webhook only records a trigger (``{smith}:wftrigger:<delivery>``, one script) and answers; this worker,
supervised in the control plane like the reaper, reads each pending trigger's workflow files with git (a slow
clone delays nothing but itself), makes a pull request's merge commit, starts the runs and settles the
trigger. A crash at any point leaves the trigger pending and the next worker (after a restart, or another
replica) does it again: run ids come from the delivery and the workflow file, and a run is created at most once,
so a trigger done twice starts each run once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from typing import TYPE_CHECKING, Any

import orjson

from smith.errors import InvalidInput, NotFound, SmithError
from smith.logging import get_logger
from smith.workflows import sources

if TYPE_CHECKING:
    from smith.control.workflows import WorkflowRuns

log = get_logger("smith.control.wftriggers")

MERGE_CONTEXT = "smith/merge"
PR_ACTIONS = ("opened", "synchronize", "reopened")


class TriggerWorker:
    def __init__(self, runs: WorkflowRuns, interval: float, parallel: int = 4) -> None:
        self.runs = runs
        self.interval = interval  # how often pending triggers are looked for without a wake-up
        self.parallel = parallel  # triggers worked on at once: a slow git source holds up only its own
        self._working: dict[str, asyncio.Task[None]] = {}

    async def serve(self) -> None:
        """Forever: take pending triggers (up to ``parallel`` at a time), then wait for the next webhook, a
        trigger settled, or ``interval``."""
        try:
            while True:
                self.runs.wake.clear()
                try:
                    for delivery in await self.runs.runs.pending_triggers():
                        if delivery not in self._working and len(self._working) < self.parallel:
                            self._working[delivery] = asyncio.create_task(self._work(delivery))
                except SmithError as exc:  # Redis down: the triggers stay pending
                    log.warning("workflow triggers not read", error=exc.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.runs.wake.wait(), self.interval)
        finally:  # stopping: no git left running (each task kills its own), nothing settled half-way
            working = list(self._working.values())
            for task in working:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)

    async def _work(self, delivery: str) -> None:
        stop = threading.Event()
        sources.ABORT.set(stop)  # this task's context: its git commands (in threads) die when it is cancelled
        try:
            await self.process(delivery)
            self.runs.wake.set()  # a slot is free: look again now
        except asyncio.CancelledError:
            stop.set()
            raise
        except SmithError as exc:  # left pending: the next look (after ``interval``) takes it again
            log.warning("workflow trigger not processed", delivery=delivery, error=exc.message)
        except Exception:  # a bug: logged, and the trigger stays pending (the loop goes on)
            log.exception("workflow trigger failed unexpectedly", delivery=delivery)
        finally:
            self._working.pop(delivery, None)

    async def drain(self) -> int:
        """Process every pending trigger once; how many were settled."""
        settled = 0
        for delivery in await self.runs.runs.pending_triggers():
            settled += await self.process(delivery)
        return settled

    async def process(self, delivery: str) -> bool:
        """Start the runs one trigger asks for and settle it; True if this call settled it."""
        rec = await self.runs.runs.get_trigger(delivery)
        if rec.get("state") != "pending":
            return False
        payload: dict[str, Any] = orjson.loads(rec["payload"])
        event, sha, ref = rec["event"], rec["sha"], rec["ref"]
        repo = self.runs.repo_of(payload)
        if repo is None:
            return await self.runs.runs.trigger_done(delivery, "failed", [], "repository no longer configured")
        installation = int(rec.get("installation_id") or 0)
        when = int(float(rec["received_at"])) if event == "pull_request" else None
        try:
            started = await self.runs.start(repo, event, payload, sha, ref, delivery, installation, merge_time=when)
        except sources.MergeConflict as exc:
            why = f"pull request #{payload.get('number')} does not merge into its base: {exc.message}; no workflow ran"
            await self.runs.post_status(repo.repository, sha, "failure", MERGE_CONTEXT, why[:140], installation)
            log.info("pull request not run: merge conflict", delivery=delivery, repo=repo.repository)
            return await self.runs.runs.trigger_done(delivery, "failed", [], why)
        except InvalidInput as exc:  # git could not read the source or the commit
            log.warning("workflow trigger failed", delivery=delivery, repo=repo.repository, error=exc.message)
            return await self.runs.runs.trigger_done(delivery, "failed", [], exc.message)
        return await self.runs.runs.trigger_done(delivery, "done", started)


async def record(wr: WorkflowRuns, event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Record a push / pull_request delivery as a trigger for the trigger worker, reading no git here (GitHub
    gives a webhook 10 s); None when it is not for built-in execution."""
    repo = wr.repo_of(payload)
    if repo is None or event not in ("push", "pull_request"):
        return None
    if event == "push":
        sha, ref = str(payload.get("after") or ""), str(payload.get("ref") or "")
        if not sha or set(sha) == {"0"}:
            return {"outcome": "ignored", "reason": "a deleted ref runs nothing"}
    else:
        if payload.get("action") not in PR_ACTIONS:
            return {"outcome": "ignored", "reason": f"pull_request action {payload.get('action')!r}"}
        pr = payload.get("pull_request") or {}
        sha = str((pr.get("head") or {}).get("sha") or "")
        ref = f"refs/pull/{payload.get('number') or pr.get('number')}/merge"
    if not sha:
        raise InvalidInput(f"{event} payload names no commit")
    _check_git_names(event, payload, sha, ref)
    installation = int((payload.get("installation") or {}).get("id") or repo.installation_id or 0)
    fields = {
        "event": event,
        "payload": orjson.dumps(payload).decode(),
        "sha": sha,
        "ref": ref,
        "installation_id": str(installation),
    }
    new = await wr.runs.trigger(delivery, fields)
    wr.wake.set()
    return {"outcome": "triggered", "delivery": delivery, "new": new}


_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_REF = re.compile(r"refs/(heads|tags|pull)/[A-Za-z0-9._/+@-]{1,250}")


def _check_git_names(event: str, payload: dict[str, Any], sha: str, ref: str) -> None:
    """What reaches git's command line from a payload is a commit id or a ref of the usual shapes, never an
    option (``--upload-pack=...``) or a revision expression: a signed payload is GitHub's, but a forge sending
    GitHub-style webhooks, or a leaked secret, must not steer the control plane's git."""
    base = str(((payload.get("pull_request") or {}).get("base") or {}).get("sha") or "")
    number = payload.get("number") or (payload.get("pull_request") or {}).get("number")
    if not _SHA.fullmatch(sha) or (base and not _SHA.fullmatch(base)):
        raise InvalidInput(f"{event} payload: a commit id is not 40 or 64 hex digits")
    if event == "pull_request" and not (isinstance(number, int) and not isinstance(number, bool) and number > 0):
        raise InvalidInput("pull_request payload: the pull request number is not a positive integer")
    if not _REF.fullmatch(ref) or ".." in ref or ref.endswith((".lock", "/", ".")):
        raise InvalidInput(f"{event} payload: {ref[:80]!r} is not a branch, tag or pull request ref")


async def view(wr: WorkflowRuns, delivery: str) -> dict[str, Any]:
    """A recorded trigger: pending (its runs not started yet), done (with its runs) or failed (why)."""
    rec = await wr.runs.get_trigger(delivery)
    if not rec:
        raise NotFound(f"no workflow trigger for delivery {delivery}")
    runs = orjson.loads(rec["runs"]) if rec.get("runs") else []
    return {"delivery": delivery, "event": rec.get("event"), "state": rec.get("state"), "runs": runs,
            "error": rec.get("error") or None}  # fmt: skip
