"""The control plane's behaviour, independent of HTTP: webhooks, agents, operators."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import orjson

from smith import tokens, tracing
from smith.adapters.redis.connect import StoreFailure
from smith.adapters.redis.jobs import Lease, RedisJobs, runner_classes_for
from smith.asyncutil import stop_task, supervise
from smith.control import metrics, webhooks
from smith.control.cachescope import lease_cache_claims
from smith.control.githubhealth import GitHubHealth
from smith.control.githubview import already_taken, resolve_waiting
from smith.control.settings import ControlSettings
from smith.control.spool import Spool
from smith.control.sweep import sweep_runners
from smith.control.wftriggers import TriggerWorker
from smith.control.workflows import WorkflowRuns
from smith.domain.jobs import Job, JobState, match_runner_class
from smith.errors import ConfigError, Conflict, InvalidInput, SmithError, Unavailable
from smith.logging import bind, get_logger
from smith.ports import RunnerCredentials
from smith.wire import agent as wire

log = get_logger("smith.control")


def job_view(job: Job) -> wire.JobView:
    return wire.JobView(
        **{name: getattr(job, name) for name in wire.JobView.model_fields if name not in ("labels", "state")},
        labels=list(job.labels),
        state=job.state.value,
    )


class NotReplicated(Unavailable):
    """A delivery recorded on the Redis primary whose wait for replicas (or the AOF) fell short: a failover now
    could lose it. ``result`` is the answer it got."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("delivery recorded but not yet on replicas or in the AOF", retry_after=1.0)
        self.result = result


class ControlPlane:
    def __init__(
        self,
        settings: ControlSettings,
        jobs: RedisJobs,
        credentials: RunnerCredentials | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.jobs = jobs
        self.credentials = credentials
        self.classes = settings.classes()
        self._by_name = {rc.name: rc for rc in self.classes}
        self._reaper: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._triggers: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.github = GitHubHealth(settings.github_retry_max_seconds, redis=jobs.r)
        self.workflows = WorkflowRuns.for_plane(settings, jobs, self.classes, credentials)
        self.triggers = TriggerWorker(self.workflows, settings.reclaim_interval_seconds)

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.jobs.migrate_keys()
            await self.jobs.ensure_groups(self._by_name)
        except Unavailable as exc:  # Redis may come up later; every call retries and /readyz says so
            log.warning("redis not ready at start", error=exc.message)
        await self._check_memory_policy()
        try:
            await self.jobs.check_durability()
        except Unavailable:
            log.warning("redis not ready: SMITH_REDIS_DURABILITY not checked")
        self._reaper = asyncio.create_task(supervise("reaper", self._reap_forever), name="smith-reaper")
        if self.credentials is not None and self.settings.github_runner_sweep_seconds > 0:
            self._sweeper = asyncio.create_task(supervise("runner-sweep", self._sweep_forever), name="smith-sweep")
        if self.workflows.repos:
            self._triggers = asyncio.create_task(supervise("wf-triggers", self.triggers.serve), name="smith-triggers")

    async def _check_memory_policy(self) -> None:
        """Refuse to start on a Redis that may evict keys (unless allowed); warn if the policy cannot be read."""
        try:
            policy = await self.jobs.memory_policy()
        except Unavailable:
            log.warning("redis not ready: maxmemory-policy not checked (Smith needs noeviction)")
            return
        if policy is None:
            log.warning("could not read redis maxmemory-policy: Smith needs noeviction (docs/deploy.md)")
            return
        if policy == "noeviction":
            return
        message = (
            f"redis maxmemory-policy is {policy}, not noeviction: when memory is full Redis evicts keys, and with "
            "them jobs, leases, streams or dedup records (docs/deploy.md)"
        )
        if not self.settings.redis_allow_eviction:
            raise ConfigError(message + "; set SMITH_REDIS_ALLOW_EVICTION=true to start anyway")
        log.warning(message)

    async def stop(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        for loop in (self._reaper, self._sweeper, self._triggers):
            if loop and not await stop_task(loop):
                log.error("background loop did not stop", loop=loop.get_name())
        if self.credentials:
            await self.credentials.aclose()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reclaim_interval_seconds)
            try:
                if self.spool is not None:
                    await self.spool.replay(self.webhook)
                counts = await self.reclaim()
                await self.workflows.sweep()
                await self.jobs.forget_agents(self._by_name, self.settings.agent_forget_seconds)
                if counts.get("requeued") or counts.get("failed"):
                    log.info("leases reclaimed", **counts)
            except SmithError as exc:
                log.warning("reclaim failed", error=exc.message)

    async def _sweep_forever(self) -> None:
        """Jobs waiting for a lost webhook are resolved from the jobs API; this deployment's stale runners go."""
        assert self.credentials is not None
        if not self.settings.deployment_id:
            log.warning("runner sweep off: set SMITH_DEPLOYMENT_ID to name this deployment's runners")
        while True:
            await asyncio.sleep(self.settings.github_runner_sweep_seconds)
            try:
                await resolve_waiting(self, self.credentials, self.settings.github_resolve_after_seconds)
                await sweep_runners(self)
            except SmithError as exc:
                log.warning("runner sweep failed", error=exc.message)

    async def reclaim(self) -> dict[str, int]:
        counts = await self.jobs.reclaim(self._by_name, self.settings.lease_ttl_seconds, self.settings.max_attempts)
        metrics.reclaimed(counts)
        return counts

    # -- webhooks -----------------------------------------------------------------------------------------

    async def receive(self, event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A verified delivery: record it now, or spool it to disk while Redis is down (GitHub won't retry).

        Recorded but not acknowledged by the replicas (or the AOF) that SMITH_REDIS_DURABILITY asks for, it is
        spooled as well: a failover may lose the primary's copy, and the replay's delivery-id dedupe records it
        once either way."""
        try:
            return await self.webhook(event, delivery, payload)
        except NotReplicated as exc:
            if self.spool is None:
                log.warning("delivery not on replicas and no spool to keep it", delivery=delivery)
                return exc.result
            try:
                await self.spool.put(event, delivery, payload)
            except Unavailable as full:
                log.error("delivery not on replicas and the spool is full", delivery=delivery, error=full.message)
                return exc.result
            log.warning(
                "delivery not on replicas: spooled to disk as well", delivery=delivery, spooled=self.spool.count
            )
            return exc.result
        except (Unavailable, StoreFailure):  # any Redis error: GitHub will not redeliver a 5xx by itself
            if self.spool is None:
                raise
            await self.spool.put(event, delivery, payload)
            log.warning("redis down: webhook delivery spooled to disk", delivery=delivery, spooled=self.spool.count)
            return {"outcome": "spooled"}

    async def webhook(self, event: str, delivery: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Record a delivery; ``NotReplicated`` if it is recorded but the durability wait fell short (a spool
        replay then keeps its file and tries again later)."""
        result, acked = await self._record(event, delivery, payload)
        if not acked:
            raise NotReplicated(result)
        return result

    async def _record(self, event: str, delivery: str, payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        base: dict[str, Any] = {"delivery": delivery, "event": event, "received_at": time.time()}
        if event == "workflow_job":
            d = webhooks.workflow_job(payload, self.classes, self.settings.deployment_id)
            base |= {"action": d.action, "job_id": d.job_id, **(d.summary or {})}
            if d.job is not None:
                outcome = {**base, "outcome": "queued", "runner_class": d.job.runner_class}
                with tracing.span("webhook", delivery=delivery, runner_class=d.job.runner_class, job_id=d.job.id):
                    res = await self.jobs.record_queued(delivery, tracing.stamp(d.job), outcome, base)
            elif d.action == "queued" or d.reason:
                outcome = {**base, "outcome": "ignored", "reason": d.reason}
                res = await self.jobs.record_queued(delivery, None, outcome, outcome)
            else:
                tomb = None
                if d.action in ("completed", "in_progress") and d.runner_class is not None:
                    tomb = {
                        "id": d.job_id,
                        "runner_class": d.runner_class.name,
                        "vcpus": str(d.runner_class.vcpus),
                        "memory_mib": str(d.runner_class.memory_mib),
                        "repo": str(base.get("repo", "")),
                        "source": "github",
                    }
                outcome = {**base, "outcome": "recorded"}
                res = await self.jobs.record_update(
                    delivery,
                    d.job_id,
                    d.runner_class.name if d.runner_class else None,
                    d.action,
                    d.conclusion,
                    outcome,
                    base,
                    tomb,
                    d.dequeue_reason,
                    d.runner_name,
                    mine := webhooks.owned(d.runner_name, self.settings.deployment_id),
                    webhooks.minted_for(d.runner_name) if mine else "",
                )
            result: dict[str, Any] = {"outcome": res.outcome, "job_id": d.job_id}
            if res.outcome == "duplicate":
                result["first"] = orjson.loads(res.detail) if res.detail else None
            elif d.reason:
                result["outcome"] = "ignored"
                result["reason"] = d.reason
            elif res.outcome == "known":
                result["state"] = res.detail
            log.info(
                "webhook",
                github_event=event,
                delivery=delivery,
                action=d.action,
                job_id=d.job_id,
                outcome=result["outcome"],
                reason=d.reason or None,
            )
            return result, res.acked
        if event in ("push", "pull_request") and (ran := await self.workflows.webhook(event, delivery, payload)):
            res = await self.jobs.record_queued(delivery, None, {**base, **ran}, {**base, **ran})
            return ({"outcome": "duplicate"} if res.outcome == "duplicate" else ran), res.acked
        reason = "pong" if event == "ping" else f"event {event!r} is not handled"
        outcome = {**base, "outcome": "ignored" if event != "ping" else "pong", "reason": reason}
        res = await self.jobs.record_queued(delivery, None, outcome, outcome)
        if res.outcome == "duplicate":
            return {"outcome": "duplicate"}, res.acked
        return {"outcome": outcome["outcome"], "reason": reason}, res.acked

    # -- agents -------------------------------------------------------------------------------------------

    async def register(self, agent_id: str, req: wire.RegisterRequest) -> wire.RegisterResponse:
        await self.jobs.put_host(agent_id, req.model_dump(), self.settings.host_ttl_seconds)
        # A (re)starting agent holds no job: whatever it had leased goes back to the queue now rather than
        # after the lease TTL.
        released = await self.jobs.release_agent(
            agent_id, self._by_name, self.settings.max_attempts, keep=set(req.running)
        )
        metrics.reclaimed(released)
        if released:
            log.info("agent restarted; its leases were released", **released)
        return wire.RegisterResponse(
            agent_id=agent_id,
            heartbeat_interval_seconds=max(1.0, self.settings.lease_ttl_seconds / 4),
            lease_ttl_seconds=self.settings.lease_ttl_seconds,
            runner_classes=[
                wire.RunnerClassView(
                    name=rc.name,
                    vcpus=rc.vcpus,
                    memory_mib=rc.memory_mib,
                    disk_mib=rc.disk_mib,
                    labels=sorted(rc.all_labels),
                )
                for rc in self.classes
            ],
        )

    async def heartbeat(self, agent_id: str, req: wire.HeartbeatRequest) -> wire.HeartbeatResponse:
        host = await self.jobs.get_host(agent_id)
        if host is None:
            raise Conflict("unknown or expired agent: register again")
        host.update(
            free_vcpus=req.free_vcpus, free_memory_mib=req.free_memory_mib, free_vms=req.free_vms, running=req.running
        )
        await self.jobs.put_host(agent_id, host, self.settings.host_ttl_seconds)
        statuses = await self.jobs.renew(agent_id, req.running)
        return wire.HeartbeatResponse.model_validate({"jobs": statuses})

    async def lease(self, agent_id: str, req: wire.LeaseRequest) -> wire.LeaseResponse | None:
        host = await self.jobs.get_host(agent_id)
        if host is None:
            raise Conflict("unknown or expired agent: register again")
        names = runner_classes_for(self.classes, host.get("labels") or [], req.free_vcpus, req.free_memory_mib)
        if not names:
            await asyncio.sleep(min(req.wait_seconds, self.settings.lease_wait_max_seconds))
            return None
        wait = min(req.wait_seconds, self.settings.lease_wait_max_seconds)
        paused = await self.github.pause_left() if self.credentials is not None else 0.0
        if paused > 0:  # GitHub's API failed a moment ago: let it rest before minting again
            await asyncio.sleep(min(wait, paused))
            return None
        lease = await self.jobs.lease(agent_id, names, wait)
        if lease is None:
            return None
        job, creds = lease.job, self.credentials
        tracing.record("queue", job.created_at, job.assigned_at, job.trace or None, runner_class=job.runner_class)
        if creds is not None and job.source == "github" and not job.run:
            taken = await already_taken(self, creds, agent_id, job)
            if taken:
                return None
        return await tracing.within(self._hand_over(agent_id, lease), "lease", job.trace or None, agent_id=agent_id)

    def runner_name(self, job: Job) -> str:
        return webhooks.runner_name(job, self.settings.deployment_id)

    async def _hand_over(self, agent_id: str, lease: Lease) -> wire.LeaseResponse:
        job = lease.job
        bind(job_id=job.id)
        rc = self._by_name.get(job.runner_class)
        runner = None
        if job.source == "github" and not job.run and self.credentials is not None:
            try:
                runner = await self.credentials.for_job(job, self.runner_name(job))
            except SmithError as exc:
                # Not the job's fault: back to its queue with its attempt given back, and a pause for GitHub.
                await self.jobs.requeue(
                    job.id,
                    lease.entry,
                    self.settings.max_attempts,
                    f"could not get runner credentials from GitHub: {exc.message}",
                    count=False,
                )
                pause = await self.github.failed(exc)
                log.warning("runner credentials failed; job re-queued", error=exc.message, pause=pause)
                raise Unavailable(
                    "GitHub did not give runner credentials; the job was re-queued", retry_after=pause
                ) from exc
            await self.github.ok(self.credentials.minted_scopes())
        cache = None
        s = self.settings
        if s.cache_url and s.cache_shared_secret:
            claims = await lease_cache_claims(self.credentials, job)  # a fork's PR never writes a branch's scope
            token = tokens.mint_job_cache(s.cache_shared_secret.get_secret_value(), job, claims)
            cache = wire.ServiceAccess(url=s.cache_url, token=token, download_host=s.cache_download_host)
        log.info("job leased", attempt=job.attempts)
        return wire.LeaseResponse(
            job=wire.JobSpec(
                id=job.id,
                runner_class=job.runner_class,
                vcpus=job.vcpus,
                memory_mib=job.memory_mib,
                disk_mib=rc.disk_mib if rc else 8192,
                labels=list(job.labels),
                repo=job.repo,
                org=job.org,
                name=job.name,
                workflow=job.workflow,
                head_sha=job.head_sha,
                head_branch=job.head_branch,
                run=job.run or (s.dev_demo_script or "" if job.source == "github" and runner is None else ""),
                attempt=job.attempts,
                steps=await self.workflows.spec_for(job),
            ),
            runner=runner,
            cache=cache,
            logs_url=s.logs_url,
            logs_token=self._logs_token(job.id, agent_id),
            lease_ttl_seconds=s.lease_ttl_seconds,
            traceparent=tracing.traceparent(),
        )

    def _logs_token(self, job_id: str, agent_id: str) -> str | None:
        """The job's log token: signed with the secret the log pipeline verifies agents with."""
        secret = self.settings.logs_token_secret or self.settings.agent_token_secret
        if secret is None:
            return None
        return tokens.mint_logs(
            secret.get_secret_value(),
            job_id=job_id,
            agent_id=agent_id,
            ttl_seconds=self.settings.logs_token_ttl_seconds,
        )

    async def report(self, agent_id: str, job_id: str, req: wire.StatusReport) -> wire.JobView:
        bind(job_id=job_id)
        if req.state != "running":
            leased = await self.jobs.get(job_id)
            if leased.source == "github" and not leased.run and self.credentials is not None:
                return await self._runner_report(agent_id, leased, req)
            await self.workflows.finished(agent_id, leased, req)
        if req.state == "released":
            raise InvalidInput("only a GitHub runner job can be released")
        with tracing.span("report", req.traceparent, child_only=True, state=req.state):
            job = await self.jobs.report(
                agent_id, job_id, JobState(req.state), reason=req.reason, exit_code=req.exit_code
            )
        log.info("job state", state=req.state, exit_code=req.exit_code)
        metrics.job_reported(job)
        await self.workflows.reported(job)
        if req.state in ("cancelled", "failed") and job.source == "github" and self.credentials is not None:
            # An ephemeral runner that never finished a job stays registered (offline) on GitHub: remove it.
            task = asyncio.create_task(self._release_runner(job))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return job_view(job)

    async def _runner_report(self, agent_id: str, job: Job, req: wire.StatusReport) -> wire.JobView:
        """A GitHub runner job's lease ended. Its runner ran whatever job GitHub gave it, so the job's state
        follows GitHub's webhooks (REPORT_RUNNER); the runner, if it ran nothing, is removed on GitHub."""
        outcome = await self.jobs.report_runner(
            agent_id,
            job.id,
            req.state,
            lease_runner=self.runner_name(job),
            max_releases=self.settings.max_runner_releases,
            reason=req.reason,
            exit_code=req.exit_code,
        )
        log.info("runner lease ended", reported=req.state, outcome=outcome)
        if req.state in ("released", "cancelled", "failed") and self.credentials is not None:
            # A runner that never took a job stays registered (offline) on GitHub: remove it.
            task = asyncio.create_task(self._release_runner(job))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        after = await self.jobs.get(job.id)
        if after.state.terminal:  # (a job GitHub finishes later, by webhook, is not counted here)
            metrics.job_reported(after)
        return job_view(after)

    async def _release_runner(self, job: Job) -> None:
        assert self.credentials is not None
        name = self.runner_name(job)
        try:
            removed = await self.credentials.release(job, name)
            log.info("runner released on GitHub", runner=name, removed=removed)
        except SmithError as exc:  # e.g. 422: it is busy (it took a job meanwhile); the sweep removes it later
            log.warning("could not remove the job's runner on GitHub", runner=name, error=exc.message)

    # -- operators ----------------------------------------------------------------------------------------

    async def submit(self, run: str, labels: list[str], repo: str = "") -> wire.JobView:
        rc = match_runner_class(labels or ["self-hosted"], self.classes)
        if rc is None:
            raise InvalidInput(f"no runner class matches labels {labels}")
        if not run.strip():
            raise InvalidInput("run must be a non-empty script")
        job = Job(
            id=f"local-{uuid.uuid4().hex[:12]}",
            state=JobState.QUEUED,
            runner_class=rc.name,
            vcpus=rc.vcpus,
            memory_mib=rc.memory_mib,
            labels=tuple(labels),
            source="api",
            repo=repo,
            org=repo.split("/")[0] if repo else "",
            run=run,
        )
        with tracing.span("submit", job_id=job.id, runner_class=rc.name):
            return job_view(await self.jobs.submit(tracing.stamp(job)))

    async def queue_health(self) -> dict[str, Any]:
        classes = await self.jobs.queue_health(self._by_name)
        hosts = await self.jobs.hosts_alive(self.settings.host_ttl_seconds)
        return {
            "classes": classes,
            "queued_total": sum(c["depth"] for c in classes.values()),
            "leases_in_flight": sum(c["leases_in_flight"] for c in classes.values()),
            "oldest_queued_age_seconds": max(
                (c["oldest_queued_age_seconds"] or 0.0 for c in classes.values()), default=0.0
            ),
            "hosts_alive": len(hosts),
            "hosts": hosts,
            "github": await self.github.view() if self.credentials is not None else None,
        }
