"""Built-in workflow runs on the platform: a configured repository's ``push`` / ``pull_request`` webhook (or an
operator's dispatch) starts one run per workflow whose ``on`` takes the event; each job of a run becomes one
Smith job (same queue, agents, VMs, log pipeline, cache) once its ``needs`` are done; the agent reports the
job's result and outputs back; the run ends with a commit status.

The run record lives in Redis (adapters/redis/wfruns.py), so ``needs``, outputs and matrix expansion survive a
restart: every state change is idempotent and ``sweep`` (each reaper tick) advances every
unfinished run from its record alone."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from smith.adapters.redis.jobs import RedisJobs
from smith.adapters.redis.wfruns import RedisRuns
from smith.control import wfconcurrency, wftriggers
from smith.control.settings import ControlSettings
from smith.control.wfchecks import JobChecks
from smith.control.wfrepos import RepoConfig, load_repos
from smith.domain.jobs import Job, JobState, RunnerClass, match_runner_class
from smith.errors import Conflict, InvalidInput, NotFound, SmithError
from smith.logging import get_logger
from smith.wire import agent as wire
from smith.workflows import sources
from smith.workflows.concurrency import concurrency_of
from smith.workflows.context import RunInfo
from smith.workflows.errors import WorkflowError
from smith.workflows.executor import Executor, conclude
from smith.workflows.inputs import dispatch_inputs
from smith.workflows.model import Workflow
from smith.workflows.parser import parse
from smith.workflows.triggers import triggered

log = get_logger("smith.control.workflows")

RESULT_OF_STATE = {JobState.SUCCEEDED: "success", JobState.FAILED: "failure", JobState.CANCELLED: "cancelled"}


class CommitStatuses(Protocol):
    async def commit_status(
        self, repo: str, sha: str, state: str, context: str, description: str, installation_id: int = 0
    ) -> None: ...


class _Quiet:
    """A reporter for planning on the control plane: it runs nothing."""

    def job_started(self, key: str, name: str) -> None: ...
    def step_started(self, key: str, name: str) -> None: ...
    def line(self, key: str, kind: str, text: str) -> None: ...
    def step_finished(self, key: str, name: str, conclusion: str, seconds: float) -> None: ...
    def job_finished(self, key: str, result: str, seconds: float) -> None: ...


T = TypeVar("T")


def _no_sessions(key: str) -> Any:
    raise SmithError("the control plane runs no steps")


def instance_id(run_id: str, job: str, index: int) -> str:
    return f"wf-{run_id}-{job}-{index}"


class WorkflowRuns:
    def __init__(
        self,
        jobs: RedisJobs,
        runs: RedisRuns,
        classes: tuple[RunnerClass, ...],
        repos: dict[str, RepoConfig],
        statuses: CommitStatuses | None = None,
        git_timeout: float = 120.0,
    ) -> None:
        self.jobs = jobs
        self.runs = runs
        self.classes = classes
        self.repos = repos
        self.statuses = statuses
        self.git_timeout = git_timeout  # seconds one git command on a source may take (the setting in for_plane)
        self._lock = asyncio.Lock()  # one advance at a time in this process (the scripts make them safe anyway)
        self.checks = JobChecks(statuses if hasattr(statuses, "create_check_run") else None, runs)  # type: ignore[arg-type]
        self.wake = asyncio.Event()  # set when a trigger is recorded: the trigger worker looks at once
        self.woken: list[str] = []  # runs to advance next (a job's concurrency group let one of theirs in)

    @classmethod
    def for_plane(
        cls, settings: ControlSettings, jobs: RedisJobs, classes: tuple[RunnerClass, ...], github: object
    ) -> WorkflowRuns:
        statuses = github if hasattr(github, "commit_status") else None
        runs = RedisRuns(jobs.r, retention_seconds=jobs.retention)
        repos = load_repos(settings.workflow_repos)
        return cls(jobs, runs, classes, repos, statuses, settings.workflow_git_timeout_seconds)

    async def _git(self, call: Callable[[], T]) -> T:
        """``call()`` (sources' git) in a thread, each git command it runs killed after ``git_timeout`` seconds."""

        def limited() -> T:
            sources.TIMEOUT.set(self.git_timeout)  # the thread's copy of the context: nothing else sees it
            return call()

        return await asyncio.to_thread(limited)

    async def reported(self, job: Job) -> None:
        """After a workflow job's final report: advance its run (a failure here is retried by the sweep)."""
        if job.source == "workflow" and job.wf_run and job.state == JobState.RUNNING:
            rec = await self.runs.get(job.wf_run)
            if f"s:{job.id}" in rec:
                key = orjson.loads(rec[f"s:{job.id}"])["key"]
                await self.checks.report(job.wf_run, rec, job.id, key, "in_progress")
        if job.source == "workflow" and job.wf_run and job.state.terminal:
            try:
                await self.advance(job.wf_run)
            except SmithError as exc:
                log.warning("workflow run not advanced", run=job.wf_run, error=exc.message)

    # -- triggers -----------------------------------------------------------------------------------------

    def repo_of(self, payload: dict[str, Any]) -> RepoConfig | None:
        name = str((payload.get("repository") or {}).get("full_name") or "")
        return self.repos.get(name.lower())

    async def webhook(self, event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Record a push / pull_request delivery for the trigger worker (wftriggers.py); None when it is not for
        built-in execution."""
        return await wftriggers.record(self, event, delivery, payload)

    async def trigger_view(self, delivery: str) -> dict[str, Any]:
        return await wftriggers.view(self, delivery)

    async def dispatch(self, repository: str, workflow: str, ref: str, inputs: dict[str, Any]) -> list[str]:
        """``workflow_dispatch`` from the operator API: one run of ``workflow`` (its path) at ``ref``."""
        repo = self.repos.get(repository.lower())
        if repo is None:
            raise NotFound(f"repository {repository} is not configured for built-in execution")

        def commit() -> str:
            with sources.local_copy(repo.source) as git:
                return sources.resolve(git, ref)

        try:
            sha = await self._git(commit)
        except WorkflowError as exc:
            raise InvalidInput(f"cannot resolve {ref!r} in {repository}: {exc.message}") from exc
        full_ref = ref if ref.startswith("refs/") or len(ref) == 40 else f"refs/heads/{ref}"
        payload = {
            "ref": full_ref,
            "inputs": inputs,
            "workflow": workflow,
            "repository": {"full_name": repo.repository, "name": repo.repository.split("/")[-1]},
        }
        started = await self.start(
            repo, "workflow_dispatch", payload, sha, full_ref, uuid.uuid4().hex, repo.installation_id, only=workflow
        )
        if not started:
            raise InvalidInput(f"{workflow} at {ref} does not exist or has no workflow_dispatch trigger")
        return started

    async def start(
        self,
        repo: RepoConfig,
        event: str,
        payload: dict[str, Any],
        sha: str,
        ref: str,
        delivery: str,
        installation: int,
        only: str | None = None,
        merge_time: int | None = None,
    ) -> list[str]:
        """One run per workflow the event triggers at ``sha`` (with ``merge_time``, a pull request's: at the
        merge commit of ``sha`` into its base, made with that date): their ids, created now or before (a trigger
        done again after a crash starts none twice). Raises ``MergeConflict``."""
        head = sha  # statuses go on the pushed commit, not on a merge commit
        try:
            sha, files, changed, extra = await self._git(
                functools.partial(sources.read_event, repo.source, event, payload, sha, merge_time)
            )
        except sources.MergeConflict:
            raise
        except WorkflowError as exc:
            raise InvalidInput(f"cannot read {repo.repository} at {sha[:12]}: {exc.message}") from exc
        started: list[str] = []
        for path, text in files.items():
            if only is not None and path != only:
                continue
            try:
                wf = parse(text, path)
            except WorkflowError as exc:
                log.warning("invalid workflow", repo=repo.repository, file=path, error=exc.message)
                await self.post_status(repo.repository, head, "error", f"smith/{path}", exc.message[:140], installation)
                continue
            if not triggered(wf, event, payload, changed):
                continue
            inputs = _dispatch_inputs(wf, payload) if event == "workflow_dispatch" else {}
            run_id = hashlib.sha256(f"{delivery}\0{path}".encode()).hexdigest()[:16]
            fields = {
                "repo": repo.repository,
                "event_name": event,
                "event": orjson.dumps(payload).decode(),
                "sha": sha,
                "ref": ref,
                "file": path,
                "workflow": text,
                "name": wf.name,
                "inputs": orjson.dumps(inputs).decode(),
                "installation_id": str(installation),
                "head_sha": head,
                **extra,
            }
            try:
                group = concurrency_of(wf.concurrency, self._contexts(fields))
            except WorkflowError as exc:
                why = f"{path}: {exc.message}"
                await self.post_status(repo.repository, head, "error", f"smith/{path}", why[:140], installation)
                continue
            if group is not None:
                fields.update(group=group[0], cancel_in_progress="1" if group[1] else "0", held="1")
            started.append(run_id)
            if await self.runs.create(run_id, fields):
                await self.started(run_id, fields)
        return started

    async def started(self, run_id: str, fields: dict[str, str]) -> None:
        """A run just created: its pending status, then its first advance."""
        log.info("workflow run started", run=run_id, repo=fields["repo"], file=fields["file"])
        installation = int(fields.get("installation_id") or 0)
        head = fields.get("head_sha") or fields["sha"]
        await self.post_status(fields["repo"], head, "pending", f"smith/{fields['name']}", "queued", installation)
        await self.advance(run_id)

    # -- progress -----------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Advance every unfinished run: jobs whose needs are done start, finished jobs are concluded, jobs
        that ended without a report (reclaimed, cancelled) count as failed or cancelled."""
        if not self.repos:
            return
        for run_id in await self.runs.unfinished():
            try:
                await self.advance(run_id)
            except SmithError as exc:
                log.warning("workflow run not advanced", run=run_id, error=exc.message)

    async def advance(self, run_id: str) -> None:
        """Move a run on (and then the runs that this let in or displaced through its concurrency group)."""
        todo = [run_id]
        while todo:
            async with self._lock:
                todo += await self._advance(todo.pop(0))
                todo += [r for r in self.woken if r not in todo]
                self.woken.clear()

    async def _advance(self, run_id: str) -> list[str]:
        rec = await self.runs.get(run_id)
        if not rec or rec.get("state") == "completed":
            return []
        more: list[str] = []
        if rec.get("held") and not rec.get("cancelled"):
            go, more = await wfconcurrency.admit(self, run_id, rec)
            if not go:
                return more
            rec = await self.runs.get(run_id)
        cancelled = rec.get("cancelled", "")
        wf = parse(rec["workflow"], rec["file"])
        moved = True
        while moved:
            moved = False
            for jid, job in wf.jobs.items():
                state = rec.get(f"j:{jid}", "waiting")
                if state == "waiting" and cancelled:  # never started: cancelled with the run
                    if await self.runs.start_job(run_id, jid, {}):
                        await self.runs.job_done(run_id, jid, _result("cancelled", {}, cancelled))
                    moved = True
                elif state == "waiting" and all(rec.get(f"j:{n}") == "done" for n in job.needs):
                    needs = {n: orjson.loads(rec[f"r:{n}"]) for n in job.needs}
                    await self._start_job(run_id, rec, wf, jid, needs)
                    moved = True
                elif state == "started":
                    moved = await self._collect(run_id, rec, jid) or moved
            if moved:
                rec = await self.runs.get(run_id)
        if all(rec.get(f"j:{j}") == "done" for j in wf.jobs):
            more += await wfconcurrency.leave(self, run_id, rec)
            results = [orjson.loads(rec[f"r:{j}"])["result"] for j in wf.jobs]
            conclusion = "failure" if {"failure", "cancelled"} & set(results) else "success"
            # The status first: a restart before run_done posts it again (the same state), never not at all.
            failed = [j for j, r in zip(wf.jobs, results, strict=True) if r in ("failure", "cancelled")]
            text = f"failed: {', '.join(failed)}" if failed else f"{len(results)} jobs succeeded"
            state = conclusion
            if cancelled:
                conclusion, state, text = "cancelled", "error", f"cancelled: {cancelled}"
            installation = int(rec.get("installation_id") or 0)
            head = rec.get("head_sha") or rec["sha"]
            await self.post_status(rec["repo"], head, state, _context(wf), text[:140], installation)
            if await self.runs.run_done(run_id, conclusion):
                log.info("workflow run finished", run=run_id, conclusion=conclusion)
        return more

    def _contexts(self, rec: dict[str, str]) -> dict[str, Any]:
        """The contexts a workflow-level expression (``concurrency``) sees."""
        info = self._info(rec)
        return {"github": info.github("", ""), "inputs": info.inputs, "vars": info.vars}

    def _info(self, rec: dict[str, str]) -> RunInfo:
        repo = self.repos.get(rec["repo"].lower())
        return RunInfo(
            repo_dir=Path("."),
            repository=rec["repo"],
            event_name=rec["event_name"],
            event=orjson.loads(rec["event"]),
            sha=rec["sha"],
            ref=rec["ref"],
            workflow_name=rec["name"],
            workflow_file=rec["file"],
            secrets=dict(repo.secrets) if repo else {},
            vars=dict(repo.vars) if repo else {},
            inputs=orjson.loads(rec.get("inputs") or "{}"),
        )

    async def _start_job(self, run_id: str, rec: dict[str, str], wf: Workflow, jid: str, needs: dict[str, Any]) -> None:
        executor = Executor(self._info(rec), wf, _no_sessions, _Quiet())
        try:
            plan = executor.plan(jid, needs)
        except WorkflowError as exc:
            if await self.runs.start_job(run_id, jid, {}):
                await self.runs.job_done(run_id, jid, _result("failure", {}, exc.message))
            return
        if plan is None or not plan.combos:
            if await self.runs.start_job(run_id, jid, {}):
                await self.runs.job_done(run_id, jid, _result("skipped", {}))
            return
        specs = {}
        for i, (key, combo) in enumerate(zip(plan.keys, plan.combos, strict=True)):
            spec = {"job": jid, "index": i, "key": key, "matrix": combo, "strategy": plan.strategies[i]}
            ctx = {**self._contexts(rec), "needs": needs, "matrix": combo, "strategy": plan.strategies[i]}
            try:
                group = concurrency_of(wf.jobs[jid].concurrency, ctx)
            except WorkflowError as exc:
                if await self.runs.start_job(run_id, jid, {}):
                    await self.runs.job_done(run_id, jid, _result("failure", {}, f"job {jid}: {exc.message}"))
                return
            if group is not None:
                spec.update(group=group[0], cancel_in_progress=group[1])
            specs[instance_id(run_id, jid, i)] = orjson.dumps({**spec, "needs": needs}).decode()
        if await self.runs.start_job(run_id, jid, specs):
            for smith_id, spec_json in list(specs.items())[: plan.max_parallel or len(specs)]:
                await self._submit(rec, wf, run_id, smith_id, orjson.loads(spec_json))

    async def _submit(
        self, rec: dict[str, str], wf: Workflow, run_id: str, smith_id: str, spec: dict[str, Any]
    ) -> None:
        if spec.get("group") and not await wfconcurrency.admit_instance(self, run_id, rec, smith_id, spec):
            return  # waits in its job's concurrency group (asked again on the next advance), or was cancelled
        try:
            executor = Executor(self._info(rec), wf, _no_sessions, _Quiet())
            labels = executor.runs_on(spec["job"], spec.get("needs") or {}, spec["matrix"], spec["strategy"])
        except WorkflowError:
            labels = []
        repo = self.repos.get(rec["repo"].lower())
        fallback = list(repo.labels) if repo else ["self-hosted"]
        rc = match_runner_class(labels, self.classes) or match_runner_class(fallback, self.classes)
        if rc is None:
            why = f"no runner class for {labels}"
            await self.instance_result(run_id, rec, smith_id, spec, "failure", {}, why)
            return
        record = Job(
            id=smith_id,
            state=JobState.QUEUED,
            runner_class=rc.name,
            vcpus=rc.vcpus,
            memory_mib=rc.memory_mib,
            labels=tuple(labels or fallback),
            source="workflow",
            repo=rec["repo"],
            org=rec["repo"].split("/")[0],
            name=spec["key"],
            workflow=rec["name"],
            head_sha=rec.get("head_sha") or rec["sha"],
            head_branch=rec["ref"].split("/", 2)[-1],
            wf_run=run_id,
        )
        with contextlib.suppress(Conflict):  # submitted before (a sweep after a restart)
            await self.jobs.submit(record)
            await self.checks.report(run_id, rec, smith_id, spec["key"], "queued")

    async def _collect(self, run_id: str, rec: dict[str, str], jid: str) -> bool:
        """Conclude a started job whose instances all have results; give results to instances whose Smith job
        ended without one; queue instances up to ``max-parallel``; with ``fail-fast``, once one failed, cancel
        the rest. True if the record changed."""
        total = int(rec.get(f"n:{jid}") or 0)
        strategy = orjson.loads(rec.get(f"s:{instance_id(run_id, jid, 0)}") or "{}").get("strategy") or {}
        limit = int(strategy.get("max-parallel") or total) or total
        done = [orjson.loads(rec[f"i:{jid}:{i}"]) for i in range(total) if f"i:{jid}:{i}" in rec]
        stopping = bool(strategy.get("fail-fast", True)) and any(d["result"] == "failure" for d in done)
        why_stop = f"cancelled: {rec['cancelled']}" if rec.get("cancelled") else "fail-fast: another matrix job failed"
        stopping = stopping or bool(rec.get("cancelled"))
        changed, running, missing = False, 0, []
        for i in range(total):
            if f"i:{jid}:{i}" in rec:
                continue
            smith_id = instance_id(run_id, jid, i)
            try:
                job = await self.jobs.get(smith_id)
            except NotFound:
                missing.append(i)
                continue
            if job.state.terminal:
                result = RESULT_OF_STATE[job.state]
                why = job.reason or f"its Smith job {smith_id} ended {job.state.value} without a report"
                spec = orjson.loads(rec[f"s:{smith_id}"])
                changed |= await self.instance_result(run_id, rec, smith_id, spec, result, {}, why)
            else:
                running += 1
                if stopping:
                    with contextlib.suppress(Conflict, NotFound):
                        await self.jobs.cancel(smith_id, why_stop)
        for i in missing:
            if stopping:
                smith_id = instance_id(run_id, jid, i)
                spec = orjson.loads(rec[f"s:{smith_id}"])
                changed |= await self.instance_result(run_id, rec, smith_id, spec, "cancelled", {}, why_stop)
            elif running < limit:
                smith_id = instance_id(run_id, jid, i)
                spec = orjson.loads(rec[f"s:{smith_id}"])
                await self._submit(rec, parse(rec["workflow"], rec["file"]), run_id, smith_id, spec)
                running += 1
        if total and len(done) == total:
            overall, outputs = conclude([(d["result"], d["outputs"]) for d in done])
            return await self.runs.job_done(run_id, jid, _result(overall, outputs)) or changed
        return changed

    async def view(self, run_id: str) -> dict[str, Any]:
        """A run as the operator API shows it: its state and each job's state, result and outputs."""
        rec = await self.runs.get(run_id)
        if not rec:
            raise NotFound(f"workflow run {run_id} not found")
        wf = parse(rec["workflow"], rec["file"])
        jobs = {}
        for jid in wf.jobs:
            done = orjson.loads(rec[f"r:{jid}"]) if f"r:{jid}" in rec else {}
            jobs[jid] = {
                "state": rec.get(f"j:{jid}", "waiting"),
                "result": done.get("result"),
                "outputs": done.get("outputs", {}),
                "smith_jobs": [instance_id(run_id, jid, i) for i in range(int(rec.get(f"n:{jid}") or 0))],
            }
        keep = ("id", "repo", "event_name", "sha", "ref", "file", "name", "state", "conclusion", "created_at",
                "attempt", "rerun_of", "group", "held", "cancelled")  # fmt: skip
        return {**{k: rec.get(k) for k in keep}, "jobs": jobs}

    # -- agents -------------------------------------------------------------------------------------------

    async def spec_for(self, job: Job) -> wire.WorkflowJobSpec | None:
        if job.source != "workflow" or not job.wf_run:
            return None
        rec = await self.runs.get(job.wf_run)
        raw = rec.get(f"s:{job.id}")
        if raw is None:
            return None
        spec = orjson.loads(raw)
        repo = self.repos.get(rec["repo"].lower())
        return wire.WorkflowJobSpec(
            run_id=job.wf_run,
            workflow=rec["workflow"],
            file=rec["file"],
            job=spec["job"],
            key=spec["key"],
            matrix=spec["matrix"],
            strategy=spec["strategy"],
            needs=spec["needs"],
            event_name=rec["event_name"],
            event=orjson.loads(rec["event"]),
            repository=rec["repo"],
            sha=rec["sha"],
            ref=rec["ref"],
            source=repo.source if repo else "",
            secrets=dict(repo.secrets) if repo else {},
            vars=dict(repo.vars) if repo else {},
            inputs=orjson.loads(rec.get("inputs") or "{}"),
            merge_base=rec.get("merge_base", ""),
            merge_head=rec.get("merge_head", ""),
            merge_time=int(rec.get("merge_time") or 0),
            run_attempt=int(rec.get("attempt") or 1),
            first_run_id=rec.get("first_run", ""),
        )

    async def finished(self, agent_id: str, job: Job, req: wire.StatusReport) -> None:
        """The leaseholder's final report of a workflow job: its result and outputs, recorded before the job's
        state changes (so a sweep never concludes it without them)."""
        if job.source != "workflow" or not job.wf_run or job.agent_id != agent_id or job.state.terminal:
            return
        rec = await self.runs.get(job.wf_run)
        raw = rec.get(f"s:{job.id}")
        if raw is None:
            return
        spec = orjson.loads(raw)
        result = req.conclusion or {"succeeded": "success", "cancelled": "cancelled"}.get(req.state, "failure")
        await self.instance_result(job.wf_run, rec, job.id, spec, result, req.outputs, req.reason)

    async def instance_result(
        self,
        run_id: str,
        rec: dict[str, str],
        smith_id: str,
        spec: dict[str, Any],
        result: str,
        outputs: dict[str, str],
        why: str = "",
    ) -> bool:
        """Record an instance's result once; the caller that recorded it completes its check run."""
        if spec.get("group"):  # first: a crash before the result is recorded leaves it again (a no-op) on retry
            await wfconcurrency.leave_instance(self, rec, smith_id, spec)
        if not await self.runs.instance_done(run_id, spec["job"], spec["index"], _result(result, outputs, why)):
            return False
        await self.checks.report(run_id, rec, smith_id, spec["key"], "completed", result, why)
        return True

    async def post_status(
        self, repo: str, sha: str, state: str, context: str, description: str, installation: int
    ) -> None:
        if self.statuses is None:
            return
        try:
            await self.statuses.commit_status(repo, sha, state, context, description, installation)
        except SmithError as exc:
            log.warning("commit status not reported", repo=repo, sha=sha, state=state, error=exc.message)


def _result(result: str, outputs: dict[str, str], error: str = "") -> str:
    return orjson.dumps({"result": result, "outputs": outputs, "error": error, "at": time.time()}).decode()


def _context(wf: Workflow) -> str:
    return f"smith/{wf.name}"


def _dispatch_inputs(wf: Workflow, payload: dict[str, Any]) -> dict[str, Any]:
    return dispatch_inputs(wf.on.get("workflow_dispatch"), dict(payload.get("inputs") or {}))
