"""The host agent: register, lease jobs that fit, run each in a fresh VM, report, destroy the VM.

``Agent`` is the composition of a control plane client, a VM backend, a capacity ledger, a warm pool and a job
output sink. ``run()`` serves until ``shutdown()`` (SIGTERM): leasing stops at once, running jobs get
``drain_seconds`` to finish, then they are stopped and reported failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from smith import __version__, tracing
from smith.agent import sticky, workflowjob
from smith.agent.capacity import Ledger, disk_room
from smith.agent.client import ControlClient
from smith.agent.logsink import JobOutput
from smith.agent.metrics import metered
from smith.agent.outcome import judge
from smith.agent.pool import WarmPool
from smith.asyncutil import ready_batches, supervise
from smith.domain.vms import VMShape
from smith.errors import Conflict, SmithError
from smith.logging import bind, bound, get_logger
from smith.ports import VMM, Machine
from smith.retry import RetryPolicy
from smith.wire import agent as wire
from smith.wire.guest import GuestConfig, GuestEvent

log = get_logger("smith.agent")


def from_guest(event: GuestEvent) -> GuestEvent:
    """A guest's event as the host records it. Everything in a VM is the job's (a root job can write to the
    event channel itself), so the guest never speaks as the host: a "system" line it sends is kept as stderr,
    and the text of its started/exit events is dropped (the host words those itself)."""
    if event.type == "line":
        return event.model_copy(update={"stream": "stderr"}) if event.stream == "system" else event
    return event.model_copy(update={"stream": "system", "line": ""})


@dataclass
class RunningJob:
    lease: wire.LeaseResponse
    shape: VMShape
    task: asyncio.Task[None] | None = None
    machine: Machine | None = None
    stop_reason: str = ""  # set when the job must stop early: "cancel" | "lost" | "shutdown" | "timeout"
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    leased_at: float = field(default_factory=time.monotonic)
    first_line_at: float | None = None
    outcome: str | None = None  # a runner job's outcome as its guest read it (outcome.judge)
    workflow: workflowjob.Outcome | None = None  # a built-in workflow job's result (agent/workflowjob.py)


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    hostname: str
    vcpus: int
    memory_mib: int
    max_vms: int
    labels: tuple[str, ...] = ()
    warm_pool: Mapping[str, int] = field(default_factory=dict)
    drain_seconds: float = 300.0
    job_timeout_seconds: float = 6 * 3600.0
    lease_wait_seconds: float = 20.0
    runner_dir: str = "/opt/actions-runner"
    runner_idle_seconds: float = 900.0
    logs_url: str | None = None
    disk_mib: int = 0  # scratch disk VMs may take (capacity.disk_budget); 0: not counted
    cache_fallback: Callable[[wire.JobSpec], wire.ServiceAccess] | None = None  # agent/cachetoken.py


class Agent:
    def __init__(self, config: AgentConfig, control: ControlClient, vmm: VMM, output: JobOutput) -> None:
        self.config = config
        self.control = control
        self.vmm = metered(vmm)  # boot and restore times for /metrics
        self.output = output
        self.ledger = Ledger(config.vcpus, config.memory_mib, config.max_vms, disk_mib=config.disk_mib)
        self.jobs: dict[str, RunningJob] = {}
        self.pool: WarmPool | None = None
        self.heartbeat_interval = 5.0
        self._draining = asyncio.Event()
        self._stopped = asyncio.Event()
        self.registered = asyncio.Event()
        self._snapshots: list[asyncio.Task[None]] = []
        self._lease_task: asyncio.Task[Any] | None = None
        self.stats: list[dict[str, float]] = []  # per finished job: lease -> first line, total

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.output.start()  # the log shipper replays what an earlier process left spooled
        removed = await self.vmm.cleanup_leftovers()
        if removed:
            log.warning("removed leftovers of an earlier agent", removed=removed)
        probe = getattr(self.vmm, "probe", None)
        if probe is not None:  # a backend this host refuses fails the start in its own words, not every job
            await probe()
        reg = await self.control.register(self._registration())
        self.heartbeat_interval = reg.heartbeat_interval_seconds
        shapes = {rc.name: VMShape(rc.name, rc.vcpus, rc.memory_mib, rc.disk_mib) for rc in reg.runner_classes}
        self.pool = WarmPool(self.vmm, self.ledger, shapes, self.config.warm_pool)
        prepare = getattr(self.vmm, "prepare_snapshot", None)
        if prepare is not None:  # boot once per warm shape, snapshot, and restore every later VM from it
            for cls in self.pool.desired:
                self._snapshots.append(asyncio.create_task(self._prepare(prepare, shapes[cls])))
        self.registered.set()
        log.info(
            "agent registered",
            agent_id=reg.agent_id,
            backend=str(self.vmm.backend),
            vcpus=self.config.vcpus,
            memory_mib=self.config.memory_mib,
            max_vms=self.config.max_vms,
            warm_pool=dict(self.config.warm_pool),
        )

    async def _prepare(self, prepare: Any, shape: VMShape) -> None:
        try:
            await prepare(shape)
            log.info("snapshot ready: warm VMs of this class restore from it", runner_class=shape.runner_class)
        except (SmithError, OSError) as exc:
            log.warning("snapshot failed; warm VMs boot cold", runner_class=shape.runner_class, error=str(exc))

    async def run(self) -> None:
        """Serve until shutdown() is called."""
        with bound(agent_id=self.config.agent_id):  # on every line of the agent's tasks
            await self._serve()

    async def _serve(self) -> None:
        await self.start()
        assert self.pool is not None
        tasks = [
            asyncio.create_task(supervise("lease", self._lease_loop), name="lease"),
            asyncio.create_task(supervise("heartbeat", self._heartbeat_loop), name="heartbeat"),
            asyncio.create_task(supervise("warm-pool", self.pool.run), name="pool"),
        ]
        try:
            await self._draining.wait()
            await self._drain()
        finally:
            try:
                for t in [*tasks, *self._snapshots]:
                    t.cancel()
                for t in [*tasks, *self._snapshots]:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                await self.pool.close()
                await self.output.aclose()
            finally:
                self._stopped.set()

    async def shutdown(self) -> None:
        """Stop leasing; let running jobs finish within drain_seconds; then stop them. Waits until done."""
        self._draining.set()
        if self._lease_task:
            self._lease_task.cancel()
        await self._stopped.wait()

    async def _drain(self) -> None:
        if self._lease_task:
            self._lease_task.cancel()
        running = [j.task for j in self.jobs.values() if j.task]
        if running:
            log.info("draining: waiting for running jobs", jobs=len(running), seconds=self.config.drain_seconds)
            _, pending = await asyncio.wait(running, timeout=self.config.drain_seconds)
            for job in list(self.jobs.values()):
                if job.task in pending:
                    job.stop_reason = "shutdown"
                    job.stop.set()
            if pending:
                await asyncio.wait(pending, timeout=60)

    # -- leasing ------------------------------------------------------------------------------------------

    def _offer(self) -> tuple[int, int, int]:
        assert self.pool is not None
        idle_cpu, idle_mem, idle_vms = self.pool.idle_capacity()
        if not disk_room(self.ledger, self.pool):  # no class's scratch disk fits: lease nothing until one ends
            return (0, 0, 0)
        return (
            self.ledger.free_vcpus + idle_cpu,
            self.ledger.free_memory_mib + idle_mem,
            self.ledger.free_vms + idle_vms,
        )

    async def _lease_loop(self) -> None:
        backoff, failures = RetryPolicy(base=0.5, max=15.0, jitter=0.5), 0
        while not self._draining.is_set():
            cpu, mem, vms = self._offer()
            if vms <= 0 or cpu <= 0:
                await asyncio.sleep(0.2)
                continue
            req = wire.LeaseRequest(free_vcpus=cpu, free_memory_mib=mem, wait_seconds=self.config.lease_wait_seconds)
            self._lease_task = asyncio.ensure_future(self.control.lease(req))
            try:
                lease = await self._lease_task
            except asyncio.CancelledError:
                if self._draining.is_set():
                    return
                raise
            except SmithError as exc:
                if isinstance(exc, Conflict):  # the control plane forgot us (Redis lost?): register again
                    await self._reregister()
                failures += 1
                wait = backoff.wait(failures, exc.retry_after)
                log.warning("lease failed", error=exc.message, retry_in=round(wait, 2))
                await asyncio.sleep(wait)
                continue
            finally:
                self._lease_task = None
            failures = 0
            if lease is not None:
                await self._accept(lease)

    async def _accept(self, lease: wire.LeaseResponse) -> None:
        assert self.pool is not None
        spec = lease.job
        shape = VMShape(spec.runner_class, spec.vcpus, spec.memory_mib, spec.disk_mib)
        job = RunningJob(lease, shape)
        if not await self._room_for(job, shape):
            # Should not happen: we only offered what we had (idle warm VMs, warm boots in flight and free room).
            log.warning(
                "no room for a leased job",
                job_id=spec.id,
                used_vcpus=self.ledger.used_vcpus,
                used_vms=self.ledger.used_vms,
                booting=dict(self.pool.booting),
                running=len(self.jobs),
            )
            await self._report(spec.id, "failed", reason="host had no room for the VM (capacity changed)")
            return
        self.jobs[spec.id] = job
        run = tracing.within(
            self._run_job(job), "job", lease.traceparent, job_id=spec.id, runner_class=spec.runner_class
        )
        job.task = asyncio.create_task(run, name=f"job-{spec.id}")

    async def _room_for(self, job: RunningJob, shape: VMShape) -> bool:
        """A warm VM of the job's class, else room for a new one: idle warm VMs are evicted and warm boots in
        flight cancelled for it (a refill may have taken the room offered while the lease was on its way)."""
        assert self.pool is not None
        async with self.pool.hold():
            for _ in range(3):  # a warm boot may finish while it is being cancelled: look again
                job.machine = None if sticky.plan(job.lease.job) else self.pool.take(shape.runner_class)
                if job.machine is not None or self.ledger.reserve(shape):
                    return True
                if not await self.pool.evict_for(shape):
                    await self.pool.cancel_boots_for(shape)
        return False

    async def _reregister(self) -> None:
        with contextlib.suppress(SmithError):
            await self.control.register(self._registration())

    def _registration(self) -> wire.RegisterRequest:
        """What this host offers; ``running`` keeps the leases of jobs still running (a re-register)."""
        return wire.RegisterRequest(
            hostname=self.config.hostname,
            vcpus=self.config.vcpus,
            memory_mib=self.config.memory_mib,
            max_vms=self.config.max_vms,
            labels=list(self.config.labels),
            backend=str(self.vmm.backend),
            version=__version__,
            running=list(self.jobs),
        )

    # -- one job ------------------------------------------------------------------------------------------

    def guest_config(self, lease: wire.LeaseResponse) -> GuestConfig:
        fallback = self.config.cache_fallback
        cache = lease.cache or (fallback(lease.job) if fallback else None)
        return GuestConfig(
            job=lease.job.model_copy(update={"steps": None}),  # a workflow job's secrets stay on the host
            runner=lease.runner,
            cache=cache,
            runner_dir=self.config.runner_dir,
            runner_idle_seconds=self.config.runner_idle_seconds,
            steps=lease.job.steps is not None,
        )

    async def _run_job(self, job: RunningJob) -> None:
        spec = job.lease.job
        state, reason, exit_code = "failed", "", None
        warm = job.machine is not None
        running_report: asyncio.Task[None] | None = None
        bind(job_id=spec.id)  # this task's lines (its own context: nothing leaks to the lease loop)
        try:
            await self.output.start_job(spec.id, job.lease.logs_token)
            if job.machine is None:
                job.machine = await sticky.boot(self.vmm, job.shape, f"job-{spec.id}-{spec.attempt}", spec)
            bind(vm_id=job.machine.id)
            await job.machine.assign(self.guest_config(job.lease))
            log.info("job assigned", job_id=spec.id, vm=job.machine.id, rootfs=getattr(job.machine, "image", None))
            await self.output.follow_files(spec.id, job.machine.host_logs())
            # Tell the control plane while the guest starts, not before it may.
            running_report = asyncio.create_task(self._report(spec.id, "running"))
            exit_code = await self._follow(
                job, workflowjob.drive(job.machine, job.lease, self.output) if spec.steps else None
            )
            if job.stop_reason:
                state = "cancelled" if job.stop_reason == "cancel" else "failed"
                reason = {
                    "cancel": "cancelled by operator",
                    "shutdown": "agent shut down before the job finished",
                    "timeout": f"job ran past {self.config.job_timeout_seconds:g}s",
                    "lost": "lease lost",
                }[job.stop_reason]
            elif exit_code is None:
                reason = "the VM ended without reporting an exit status"
            else:
                state, reason = judge(exit_code, job.outcome)
        except SmithError as exc:
            reason = f"VM failed: {exc.message}"
            log.warning("job failed in the VM layer", error=exc.message)
        except OSError as exc:
            reason = f"VM failed: {exc}"
        except Exception as exc:  # a bug or a job we cannot handle: report it failed rather than leave it running
            reason = f"agent error: {type(exc).__name__}: {exc}"
            log.exception("job failed in the agent")
        finally:
            if job.machine is not None:
                with contextlib.suppress(Exception):
                    await sticky.finish(job.machine, state == "succeeded")
                with contextlib.suppress(Exception):
                    await job.machine.stop()
            self.ledger.release(job.shape)
            await self.output.close_job(spec.id)
            self.jobs.pop(spec.id, None)
            if self.pool:
                self.pool.changed.set()
        if running_report is not None:
            await running_report  # the final state must not overtake "running"
        if job.stop_reason != "lost":
            wf = job.workflow if job.workflow is not None and not job.stop_reason else None
            extra = {"conclusion": wf.conclusion, "outputs": wf.outputs} if wf else {}
            await self._report(spec.id, state, reason=reason, exit_code=exit_code, **extra)
        done = time.monotonic()
        self.stats.append(
            {
                "lease_to_first_line": (job.first_line_at or done) - job.leased_at,
                "total": done - job.leased_at,
                "warm": float(warm),
            }
        )
        log.info("job finished", state=state, exit_code=exit_code, reason=reason or None, warm=warm)

    async def _follow(
        self, job: RunningJob, steps: Coroutine[Any, Any, workflowjob.Outcome] | None = None
    ) -> int | None:
        """Stream the guest's events until its exit event, a stop request, or the job timeout; or, for a
        built-in workflow job, drive its ``steps`` until they end, a stop request, or the job timeout."""
        assert job.machine is not None
        exit_code: int | None = None
        spec_id = job.lease.job.id

        async def consume() -> None:
            nonlocal exit_code
            assert job.machine is not None
            # The events already read go to the output together: one fsync of the log spool for many lines. A
            # guest never speaks as the host: each event passes through from_guest first.
            async with contextlib.aclosing(ready_batches(job.machine.events())) as batches:
                async for said in batches:
                    batch = [from_guest(e) for e in said]
                    if job.first_line_at is None and any(e.type == "line" for e in batch):
                        job.first_line_at = time.monotonic()
                        tracing.record("guest first line", time.time() - (job.first_line_at - job.leased_at))
                    ends = next((i for i, e in enumerate(batch) if e.type == "exit"), None)
                    await self.output.emit_many(spec_id, batch if ends is None else batch[: ends + 1])
                    if ends is not None:
                        exit_code = batch[ends].exit_code
                        job.outcome = batch[ends].outcome
                        return

        reader: asyncio.Task[Any] = asyncio.create_task(consume() if steps is None else steps)
        stopper = asyncio.create_task(job.stop.wait())
        done, _ = await asyncio.wait(
            {reader, stopper}, timeout=self.config.job_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            job.stop_reason = "timeout"
        for t in (reader, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if reader in done and reader.exception():
            raise reader.exception()  # type: ignore[misc]
        if steps is not None and reader in done:
            job.workflow = reader.result()
            exit_code = job.workflow.exit_code
        if job.stop_reason:
            await self.output.emit(
                spec_id,
                GuestEvent(
                    type="line", ts=time.time(), stream="system", line=f"smith: job stopped ({job.stop_reason})"
                ),
            )
        return exit_code

    async def _report(
        self, job_id: str, state: str, *, reason: str = "", exit_code: int | None = None, **extra: Any
    ) -> None:
        try:
            await self.control.report(
                job_id,
                wire.StatusReport.model_validate(
                    {
                        "state": state,
                        "reason": reason,
                        "exit_code": exit_code,
                        "traceparent": tracing.traceparent(),
                        **extra,
                    }
                ),
            )
        except SmithError as exc:
            log.warning("could not report job state", job_id=job_id, state=state, error=exc.message)

    # -- heartbeat ----------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                resp = await self.control.heartbeat(
                    wire.HeartbeatRequest(
                        running=list(self.jobs),
                        free_vcpus=self.ledger.free_vcpus,
                        free_memory_mib=self.ledger.free_memory_mib,
                        free_vms=self.ledger.free_vms,
                    )
                )
            except Conflict:
                await self._reregister()
                continue
            except SmithError as exc:
                log.warning("heartbeat failed", error=exc.message)
                continue
            for job_id, status in resp.jobs.items():
                job = self.jobs.get(job_id)
                if job and status in ("cancel", "lost") and not job.stop_reason:
                    log.info("stopping job", job_id=job_id, why=status)
                    job.stop_reason = status
                    job.stop.set()
