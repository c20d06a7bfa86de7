"""A built-in workflow job on the host agent: the lease's JobSpec carries the job (``steps``); the VM is booted
and assigned in steps mode as usual, then the workflow executor (smith/workflows, the same code as ``smith
run``) drives the steps one command at a time through the guest agent. Step headers, output, timings and
conclusions go to the job's output (the log pipeline) like any job's lines; the result and outputs go back to
the control plane in the final status report."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from smith.agent.logsink import JobOutput
from smith.errors import SmithError
from smith.ports import Machine
from smith.wire import agent as wire
from smith.wire.guest import GuestEvent
from smith.workflows import sources
from smith.workflows.context import RunInfo
from smith.workflows.errors import WorkflowError
from smith.workflows.executor import Executor
from smith.workflows.machines import host_workdir
from smith.workflows.parser import parse
from smith.workflows.report import MARK
from smith.workflows.session import GuestSession


@dataclass
class Outcome:
    exit_code: int
    conclusion: str
    outputs: dict[str, str] = field(default_factory=dict)


class LogReporter:
    """The executor's reporter writing the job's output: lines gathered as they come, emitted in batches."""

    def __init__(self, output: JobOutput, job_id: str) -> None:
        self.output = output
        self.job_id = job_id
        self.pending: list[GuestEvent] = []
        self.wake = asyncio.Event()

    def _add(self, stream: str, text: str) -> None:
        self.pending.append(GuestEvent(type="line", ts=time.time(), stream=stream, line=text))
        self.wake.set()

    def job_started(self, key: str, name: str) -> None:
        self._add("system", f"▶ job {name}")

    def step_started(self, key: str, name: str) -> None:
        self._add("system", f"▶ {name}")

    def line(self, key: str, kind: str, text: str) -> None:
        if kind == "group":
            self._add("stdout", f"▾ {text}")
        elif kind != "endgroup":
            self._add("stderr" if kind in ("error", "warning") else "stdout", text)

    def step_finished(self, key: str, name: str, conclusion: str, seconds: float) -> None:
        self._add("system", f"{MARK.get(conclusion, '?')} {name}: {conclusion} [{seconds:.2f}s]")

    def job_finished(self, key: str, result: str, seconds: float) -> None:
        self._add("system", f"{MARK.get(result, '?')} job {key}: {result} [{seconds:.2f}s]")

    async def flush(self) -> None:
        self.wake.clear()
        batch, self.pending = self.pending, []
        if batch:
            await self.output.emit_many(self.job_id, batch)

    async def pump(self) -> None:
        while True:
            await self.wake.wait()
            await self.flush()


async def drive(machine: Machine, lease: wire.LeaseResponse, output: JobOutput) -> Outcome:
    """Run the lease's workflow job in ``machine`` (assigned in steps mode)."""
    spec = lease.job.steps
    assert spec is not None
    session = GuestSession(machine, host_workdir(machine))  # type: ignore[arg-type]  # (refuses a VM without steps)
    reporter = LogReporter(output, lease.job.id)
    pump = asyncio.create_task(reporter.pump())
    tmp = Path(tempfile.mkdtemp(prefix="smith-wf-"))
    try:
        try:
            wf = parse(spec.workflow, spec.file)
            if spec.job not in wf.jobs:
                raise WorkflowError(f"no job {spec.job!r} in {spec.file}")
            repo_name = spec.repository.split("/")[-1]
            merge = (spec.merge_base, spec.merge_head, spec.merge_time) if spec.merge_head else None
            pull = spec.ref.removesuffix("/merge") + "/head" if spec.ref.startswith("refs/pull/") else ""
            repo = await asyncio.to_thread(sources.checkout, spec.source, spec.sha, tmp / repo_name, merge, pull)
        except (WorkflowError, SmithError) as exc:
            reporter.line(spec.key, "error", f"Error: {exc.message}")
            return Outcome(1, "failure")
        info = RunInfo(
            repo_dir=repo,
            repository=spec.repository,
            event_name=spec.event_name,
            event=spec.event,
            sha=spec.sha,
            ref=spec.ref,
            workflow_name=wf.name,
            workflow_file=spec.file,
            secrets=dict(spec.secrets),
            vars=dict(spec.vars),
            inputs=dict(spec.inputs),
            run_id=int(first[:12], 16) if _hex(first := spec.first_run_id or spec.run_id) else 1,
            run_number=spec.run_number,
            run_attempt=spec.run_attempt,
            cache=lease.cache is not None,
        )
        executor = Executor(info, wf, lambda key: contextlib.nullcontext(session), reporter)
        result = await executor.run_instance(wf.jobs[spec.job], spec.key, spec.matrix, spec.strategy, spec.needs)
        ok = result.result in ("success", "skipped")
        return Outcome(0 if ok else 1, result.result, result.outputs)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        await reporter.flush()
        shutil.rmtree(tmp, ignore_errors=True)


def _hex(text: str) -> bool:
    try:
        int(text[:12], 16)
    except ValueError:
        return False
    return True
