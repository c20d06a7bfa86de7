"""A whole workflow run: jobs in ``needs`` order (independent ones in parallel within capacity), matrix
expansion, ``fail-fast`` and ``max-parallel``, outputs between jobs; each job in a fresh VM or sandbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from smith.errors import SmithError
from smith.workflows.commands import Masker
from smith.workflows.context import RunInfo
from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import (
    Scope,
    evaluate_if,
    interpolate,
    interpolate_tree,
    interpolate_value,
    to_str,
    truthy,
)
from smith.workflows.matrix import named
from smith.workflows.model import Job, Workflow
from smith.workflows.runner import JobResult, JobRunner, Reporter
from smith.workflows.session import GuestSession

SessionFactory = Callable[[str], AbstractAsyncContextManager[GuestSession]]


@dataclass
class RunResult:
    workflow: str
    jobs: list[JobResult] = field(default_factory=list)
    conclusion: str = "success"
    seconds: float = 0.0


class Executor:
    def __init__(
        self,
        info: RunInfo,
        workflow: Workflow,
        sessions: SessionFactory,
        reporter: Reporter,
        *,
        capacity: int = 2,
        only_job: str | None = None,
        matrix_filter: dict[str, str] | None = None,
    ) -> None:
        self.info = info
        self.workflow = workflow
        self.sessions = sessions
        self.reporter = reporter
        self.capacity = asyncio.Semaphore(max(1, capacity))
        self.matrix_filter = matrix_filter or {}
        self.masker = Masker(list(info.secrets.values()))
        self.selected = self._select(only_job)
        self.done: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _select(self, only_job: str | None) -> list[str]:
        if only_job is None:
            return list(self.workflow.jobs)
        if only_job not in self.workflow.jobs:
            raise WorkflowError(f"no job {only_job!r} in {self.workflow.file} (jobs: {', '.join(self.workflow.jobs)})")
        wanted: set[str] = set()
        todo = [only_job]
        while todo:
            j = todo.pop()
            if j not in wanted:
                wanted.add(j)
                todo.extend(self.workflow.jobs[j].needs)
        return [j for j in self.workflow.jobs if j in wanted]

    async def run(self) -> RunResult:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self.done = {j: loop.create_future() for j in self.selected}
        result = RunResult(self.workflow.name)
        tasks = [asyncio.create_task(self._job(j, result)) for j in self.selected]
        await asyncio.gather(*tasks)
        result.seconds = time.monotonic() - started
        if any(j.result in ("failure", "cancelled") for j in result.jobs):
            result.conclusion = "failure"
        return result

    def plan(self, jid: str, needs: dict[str, Any]) -> Plan | None:
        """A job's instances once its ``needs`` are done (their result and outputs): None when its ``if``
        says skip; ``WorkflowError`` when its ``if`` or matrix is wrong. The control plane plans built-in runs
        with this too (control/workflows.py)."""
        job = self.workflow.jobs[jid]
        base_ctx = self.job_context(jid, needs)
        if not evaluate_if(job.if_, Scope(base_ctx, status=needs_status(needs))):
            return None
        if job.unsupported:
            raise WorkflowError(job.unsupported)
        combos, names = self._combos(job, base_ctx)
        strategy = job.strategy
        fail_fast = truthy(interpolate_tree(strategy.fail_fast, Scope(base_ctx))) if strategy else True
        max_parallel = interpolate_tree(strategy.max_parallel, Scope(base_ctx)) if strategy else None
        most = int(float(max_parallel)) if max_parallel else len(combos)
        strategies = [
            {"fail-fast": fail_fast, "job-index": i, "job-total": len(combos), "max-parallel": most}
            for i in range(len(combos))
        ]
        return Plan(self._keys(job, combos, names, strategies, needs), combos, strategies, fail_fast, most)

    def job_context(
        self,
        jid: str,
        needs: dict[str, Any],
        matrix: dict[str, Any] | None = None,
        strategy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What a job's own keys (``if``, ``strategy``, ``name``, ``runs-on``, ``timeout-minutes``,
        ``continue-on-error``) see: github, needs, vars, inputs, and once expanded matrix and strategy."""
        return {
            "github": self.info.github(jid, ""),
            "needs": needs,
            "vars": dict(self.info.vars),
            "inputs": dict(self.info.inputs),
            "secrets": dict(self.info.secrets),
            "env": {},
            "matrix": matrix or None,  # null for a job without a matrix, as on GitHub
            "strategy": strategy or {},
            "job": {},
            "steps": {},
            "runner": {},
        }

    def runs_on(self, jid: str, needs: dict[str, Any], matrix: dict[str, Any], strategy: dict[str, Any]) -> list[str]:
        """The labels of a job instance's ``runs-on`` (a label, a list, or a ``{group, labels}`` mapping),
        evaluated with github, needs, vars, inputs, matrix and strategy as on GitHub."""
        scope = Scope(self.job_context(jid, needs, matrix, strategy))
        value = interpolate_tree(self.workflow.jobs[jid].runs_on, scope)
        if isinstance(value, dict):
            value = value.get("labels")
        items = value if isinstance(value, list) else [value]
        return [to_str(x) for x in items if to_str(x)]

    async def _job(self, jid: str, run: RunResult) -> None:
        job = self.workflow.jobs[jid]
        needs = {n: await self.done[n] for n in job.needs}
        try:
            plan = self.plan(jid, needs)
        except WorkflowError as exc:
            self.reporter.line(jid, "error", f"Error: job {jid}: {exc.message}")
            self._finish(jid, run, [JobResult(jid, jid, "failure", {}, 0.0, error=exc.message)])
            return
        if plan is None:
            self.reporter.job_finished(jid, "skipped", 0.0)
            self._finish(jid, run, [JobResult(jid, jid, "skipped", {}, 0.0)])
            return
        combos, keys, fail_fast = plan.combos, plan.keys, plan.fail_fast
        limit = asyncio.Semaphore(plan.max_parallel or 1)
        instances: list[JobResult] = []
        tasks: list[asyncio.Task[JobResult]] = []

        async def one(index: int, combo: dict[str, Any]) -> JobResult:
            async with limit, self.capacity:
                result = await self.run_instance(job, keys[index], combo, plan.strategies[index], needs)
                result.index = index
                return result

        for i, combo in enumerate(combos):
            tasks.append(asyncio.create_task(one(i, combo)))
        pending = set(tasks)
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                if t.cancelled():
                    continue
                r = t.result()
                instances.append(r)
                if r.result == "failure" and fail_fast and pending:
                    for p in pending:
                        p.cancel()
        for i, t in enumerate(tasks):
            if t.cancelled():
                instances.append(JobResult(keys[i], jid, "cancelled", {}, 0.0, index=i))
                self.reporter.job_finished(keys[i], "cancelled", 0.0)
        instances.sort(key=lambda r: r.index)
        self._finish(jid, run, instances, job)

    def _keys(
        self,
        job: Job,
        combos: list[dict[str, Any]],
        names: list[str],
        strategies: list[dict[str, Any]],
        needs: dict[str, Any],
    ) -> list[str]:
        """How GitHub names each instance: the job's name (or id), evaluated (github, needs, vars, inputs, matrix,
        strategy), with the matrix values appended unless the name uses an expression; unique within the run."""
        has_matrix = job.strategy is not None and job.strategy.matrix is not None
        keys: list[str] = []
        for combo, suffix, strategy in zip(combos, names, strategies, strict=True):
            name = job.id
            if job.name:
                try:
                    scope = Scope(self.job_context(job.id, needs, combo, strategy))
                    name = interpolate(str(job.name), scope).strip() or job.id
                except WorkflowError:
                    name = str(job.name)
            if has_matrix and suffix and not (job.name and "${{" in str(job.name)):
                name = f"{name} ({suffix})"
            while name in keys or (name != job.id and name in self.workflow.jobs):
                name += "'"
            keys.append(name)
        return keys

    def _combos(self, job: Job, ctx: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The job's matrix combinations and the suffix GitHub names each with."""
        if job.strategy is None or job.strategy.matrix is None:
            return [{}], [""]
        scope = Scope(ctx)
        matrix = job.strategy.matrix
        value = interpolate_value(matrix, scope) if isinstance(matrix, str) else interpolate_tree(dict(matrix), scope)
        pairs = named(value, f"job {job.id!r}: ")
        for k, v in self.matrix_filter.items():
            pairs = [(c, n) for c, n in pairs if k in c and to_str(c[k]) == v]
        return [c for c, _ in pairs], [n for _, n in pairs]

    async def run_instance(
        self, job: Job, key: str, combo: dict[str, Any], strategy: dict[str, Any], needs: dict[str, Any]
    ) -> JobResult:
        started = time.monotonic()
        scope = Scope(self.job_context(job.id, needs, combo, strategy))
        try:
            async with self.sessions(key) as session:
                runner = JobRunner(
                    self.info,
                    self.workflow.env,
                    self.workflow.defaults_run,
                    job,
                    key,
                    session,
                    self.reporter,
                    matrix=combo,
                    strategy=strategy,
                    needs=needs,
                    masker=Masker(list(self.masker.values)),
                )
                minutes = job_minutes(job, scope)
                try:
                    result = await asyncio.wait_for(runner.run(), minutes * 60)
                except TimeoutError:
                    self.reporter.line(key, "error", f"Error: the job exceeded its timeout of {minutes:g} minutes")
                    self.reporter.job_finished(key, "failure", time.monotonic() - started)
                    return JobResult(key, job.id, "failure", {}, time.monotonic() - started, error="timed out")
                await session.end()
        except SmithError as exc:
            self.reporter.line(key, "error", f"Error: {exc.message}")
            self.reporter.job_finished(key, "failure", time.monotonic() - started)
            return JobResult(key, job.id, "failure", {}, time.monotonic() - started, error=exc.message)
        if result.result == "failure" and truthy(interpolate_tree(job.continue_on_error, scope)):
            result.result = "success"
        result.outputs = {k: self.masker.mask(v) for k, v in result.outputs.items()}
        return result

    def _finish(self, jid: str, run: RunResult, instances: list[JobResult], job: Job | None = None) -> None:
        run.jobs.extend(instances)
        overall, outputs = conclude([(r.result, r.outputs) for r in instances])
        self.done[jid].set_result({"result": overall, "outputs": outputs})


@dataclass
class Plan:
    keys: list[str]
    combos: list[dict[str, Any]]
    strategies: list[dict[str, Any]]
    fail_fast: bool
    max_parallel: int


def job_minutes(job: Job, scope: Scope) -> float:
    """A job's ``timeout-minutes``, which may be an expression (``${{ inputs.minutes }}``)."""
    value = to_str(interpolate_tree(job.timeout_minutes, scope)) or "360"
    try:
        return float(value)
    except ValueError:
        raise WorkflowError(f"job {job.id!r}: timeout-minutes must be a number, not {value!r}") from None


def needs_status(needs: dict[str, Any]) -> str:
    """The status a job's implicit ``success()`` sees: from the results of the jobs it needs."""
    results = [n["result"] for n in needs.values()]
    for state in ("failure", "cancelled", "skipped"):
        if state in results:
            return state
    return "success"


def conclude(instances: list[tuple[str, dict[str, str]]]) -> tuple[str, dict[str, str]]:
    """A job's result and outputs from its instances' (matrix combinations') results and outputs."""
    results = {r for r, _ in instances}
    overall = "success"
    for state in ("failure", "cancelled", "skipped"):
        if state in results and (state != "skipped" or results == {"skipped"}):
            overall = state
            break
    outputs: dict[str, str] = {}
    for _, outs in instances:
        outputs.update({k: v for k, v in outs.items() if v != "" or k not in outputs})
    return overall, outputs


def new_vm_id() -> str:
    return uuid.uuid4().hex[:12]
