"""GitHub Actions as the fake GitHub plays it: workflow jobs, runners taking them, the webhooks about them.

What GitHub does, and so what this does:

* Jobs are queued per repository (``queue_job``). A queued job goes to ANY idle online runner of its repository
  (or of its repository's organisation) whose labels include all of the job's labels, compared without case:
  not necessarily the runner minted "for" it. A JIT config cannot bind a runner to a job.
* A runner is online while it holds a session (``POST /_actions/session``, what GitHub's runner does once it has
  configured itself from its JIT config) and is given a job by long-polling ``GET /_actions/message``. It
  reports with ``POST /_actions/jobs/{id}/complete``; an ephemeral runner is removed after its job.
* Every change sends GitHub's signed ``workflow_job`` webhook (``queued``; ``in_progress`` naming the runner's
  id and name; ``completed`` with its conclusion) to ``deliver_to(url, secret)``, in GitHub's order; ``hold()``
  keeps them back and ``flush(reverse=True)`` delivers what was held in another order, as GitHub sometimes does.
* ``cancel(job_id)``: a queued job completes ``cancelled`` at once; a running one is flagged, its runner sees
  that on its next poll, stops the job and reports it ``cancelled``.

The ``/_actions`` routes stand for GitHub's Actions service (the runner's broker), which is not part of the
REST API and so not checked against its description; the stand-in runner (``smith.testing.runner``) speaks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smith.testing.github_runs import WorkflowRun

if TYPE_CHECKING:
    from smith.testing.github import FakeGitHub

RESULTS = {"succeeded": "success", "failed": "failure", "cancelled": "cancelled"}


@dataclass
class WorkflowJob:
    id: int
    repo: str  # owner/name, as given
    labels: list[str]
    name: str
    script: str  # what the stand-in runner runs for it
    run_id: int
    created_at: float
    status: str = "queued"  # queued | in_progress | completed
    conclusion: str | None = None
    runner_id: int | None = None
    runner_name: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    cancel_requested: bool = False


@dataclass
class Delivery:
    action: str
    job_id: int
    runner_name: str | None
    status: int = 0  # the control plane's answer (0: not sent yet, -1: could not connect)


@dataclass
class Actions:
    """The jobs side of a ``FakeGitHub`` (``fake.actions``)."""

    github: FakeGitHub
    assign_order: str = "oldest"  # oldest | newest | random: which of the matching queued jobs a runner gets
    paused: bool = False  # no job is given to any runner while set
    jobs: dict[int, WorkflowJob] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    credentials: dict[str, tuple[str, int]] = field(default_factory=dict)  # runner secret -> (scope, runner id)
    runs: dict[int, WorkflowRun] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = itertools.count(4_000_000_001)
        self._url = ""
        self._secret = b""
        self._held: list[tuple[Delivery, bytes]] | None = None
        self._outbox: queue.Queue[tuple[Delivery, bytes] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._sending = threading.Event()

    @property
    def lock(self) -> threading.Lock:
        return self.github._lock

    def routes(self) -> list[Route]:
        return [
            Route("/_actions/session", self._session, methods=["POST", "DELETE"]),
            Route("/_actions/message", self._message, methods=["GET"]),
            Route("/_actions/jobs/{job_id:int}", self._job_state, methods=["GET"]),
            Route("/_actions/jobs/{job_id:int}/complete", self._complete, methods=["POST"]),
        ]

    # -- what tests do -----------------------------------------------------------------------------------

    def deliver_to(self, url: str, secret: str) -> None:
        """Send webhooks to ``url`` (the control plane's ``/webhooks/github``), signed with ``secret``."""
        self._url, self._secret = url, secret.encode()
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_forever, name="fake-github-webhooks", daemon=True)
            self._sender.start()

    def close(self) -> None:
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(10)
            self._sender = None

    def start_run(
        self,
        repo: str,
        *,
        event: str = "push",
        head_branch: str = "main",
        head_repo: str = "",
        pull_number: int = 0,
        base_branch: str = "main",
    ) -> WorkflowRun:
        """A workflow run of ``repo``: a push (the default), or a pull request's (``event="pull_request"``, its
        ``pull_number``; ``head_repo`` a fork's ``owner/name`` for a fork's)."""
        with self.lock:
            run = WorkflowRun(next(self._ids), repo, event, head_branch, head_repo, pull_number, base_branch)
            run.created_at = self.github.clock()
            self.runs[run.id] = run
        return run

    def run_status(self, run: WorkflowRun) -> str:
        """queued, in_progress or completed, from its jobs' (caller holds the lock)."""
        states = {j.status for j in self.jobs.values() if j.run_id == run.id}
        if states and states <= {"completed"}:
            return "completed"
        return "in_progress" if "in_progress" in states or "completed" in states else "queued"

    def queue_job(
        self,
        repo: str,
        labels: list[str],
        *,
        name: str = "build",
        script: str = "true",
        run: WorkflowRun | None = None,
    ) -> WorkflowJob:
        """A queued job of ``run`` (by default a push run of its own on ``main``)."""
        run = run or self.start_run(repo)
        with self.lock:
            job = WorkflowJob(next(self._ids), repo, list(labels), name, script, run.id, self.github.clock())
            self.jobs[job.id] = job
            self._webhook("queued", job)
        return job

    def cancel(self, job_id: int) -> None:
        with self.lock:
            job = self.jobs[job_id]
            if job.status == "queued":
                self._finish(job, "cancelled")
            elif job.status == "in_progress":
                job.cancel_requested = True

    def hold(self) -> None:
        """Keep webhooks back until ``flush``."""
        with self.lock:
            self._held = []

    def flush(self, *, reverse: bool = False, shuffle: bool = False) -> None:
        """Deliver what ``hold`` kept back: in order, reversed or shuffled; later webhooks go out at once."""
        with self.lock:
            held, self._held = self._held or [], None
        if reverse:
            held.reverse()
        if shuffle:
            random.shuffle(held)
        for item in held:
            self._outbox.put(item)

    def wait_delivered(self, timeout: float = 10.0) -> None:
        """Until every webhook sent so far has had its answer."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                pending = [d for d in self.deliveries if d.status == 0]
            if not pending and self._outbox.empty() and not self._sending.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhooks not delivered: {pending}")
            time.sleep(0.02)

    def job(self, job_id: int) -> WorkflowJob:
        with self.lock:
            return self.jobs[job_id]

    def job_body(self, job: WorkflowJob) -> dict[str, Any]:
        """A job as GitHub's REST API and its ``workflow_job`` webhook describe it."""
        api = f"https://api.github.com/repos/{job.repo}"
        return {
            "id": job.id,
            "run_id": job.run_id,
            "run_url": f"{api}/actions/runs/{job.run_id}",
            "run_attempt": 1,
            "node_id": f"CR_{job.id}",
            "head_sha": "f" * 40,
            "url": f"{api}/actions/jobs/{job.id}",
            "html_url": f"https://github.com/{job.repo}/actions/runs/{job.run_id}/job/{job.id}",
            "status": job.status,
            "conclusion": job.conclusion,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at or job.created_at),
            "completed_at": _iso(job.completed_at) if job.completed_at else None,
            "name": job.name,
            "steps": [],
            "check_run_url": f"{api}/check-runs/{job.id}",
            "labels": job.labels,
            "runner_id": job.runner_id,
            "runner_name": job.runner_name,
            "runner_group_id": 1 if job.runner_id else None,
            "runner_group_name": "Default" if job.runner_id else None,
            "workflow_name": "CI",
            "head_branch": self.runs[job.run_id].head_branch if job.run_id in self.runs else "main",
        }

    # -- webhooks ----------------------------------------------------------------------------------------

    def _webhook(self, action: str, job: WorkflowJob) -> None:
        """Queue GitHub's ``workflow_job`` delivery about ``job`` (caller holds the lock)."""
        owner, name = job.repo.split("/")
        inst = next((i for i in self.github.installations.values() if job.repo.lower() in i.repos), None)
        payload = {
            "action": action,
            "workflow_job": self.job_body(job),
            "repository": {
                "id": abs(hash(job.repo.lower())) % 10**9,
                "name": name,
                "full_name": job.repo,
                "owner": {"login": owner, "type": inst.account_type if inst else "Organization"},
                "default_branch": "main",
                "private": True,
            },
            "sender": {"login": "octocat", "type": "User"},
        }
        if inst is not None:
            payload["installation"] = {"id": inst.id}
            if inst.account_type == "Organization":
                payload["organization"] = {"login": inst.account}
        delivery = Delivery(action, job.id, job.runner_name)
        self.deliveries.append(delivery)
        item = (delivery, json.dumps(payload).encode())
        if self._held is not None:
            self._held.append(item)
        else:
            self._outbox.put(item)

    def _send_forever(self) -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                item = self._outbox.get()
                if item is None:
                    return
                self._sending.set()
                delivery, body = item
                signature = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
                headers = {
                    "X-GitHub-Event": "workflow_job",
                    "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": signature,
                    "Content-Type": "application/json",
                    "User-Agent": "GitHub-Hookshot/fake",
                }
                try:
                    status = client.post(self._url, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = -1  # GitHub does not redeliver on its own either
                with self.lock:
                    delivery.status = status
                if self._outbox.empty():
                    self._sending.clear()

    # -- the runner's side -------------------------------------------------------------------------------

    def _runner_of(self, request: Request) -> tuple[str, dict[str, Any]] | None:
        secret = request.headers.get("authorization", "").removeprefix("Bearer ")
        found = self.credentials.get(secret)
        if found is None:
            return None
        scope, runner_id = found
        runner = self.github.runners.get(scope, {}).get(runner_id)
        return (scope, runner) if runner is not None else None

    async def _session(self, request: Request) -> Response:
        with self.lock:
            found = self._runner_of(request)
            if found is None:
                return _refused()
            found[1]["status"] = "online" if request.method == "POST" else "offline"
            return JSONResponse({"runner_id": found[1]["id"], "runner_name": found[1]["name"]})

    async def _message(self, request: Request) -> Response:
        """Long poll: the job GitHub gives this runner, or 204 after ``wait`` seconds."""
        deadline = time.monotonic() + min(float(request.query_params.get("wait", "5")), 30.0)
        while True:
            with self.lock:
                found = self._runner_of(request)
                if found is None:
                    return _refused()
                scope, runner = found
                if runner["status"] != "online":
                    return _refused("no session")
                job = self._assign(scope, runner)
                if job is not None:
                    return JSONResponse({"job_id": job.id, "name": job.name, "script": job.script})
            if time.monotonic() > deadline:
                return Response(status_code=204)
            await asyncio.sleep(0.05)

    def _assign(self, scope: str, runner: dict[str, Any]) -> WorkflowJob | None:
        """GitHub's choice (caller holds the lock): an idle runner takes a queued job of its scope whose labels
        it all has."""
        if runner["busy"] or self.paused:
            return None
        labels = {label["name"].lower() for label in runner["labels"]}
        fits = [
            j
            for j in self.jobs.values()
            if j.status == "queued" and _in_scope(j.repo, scope) and {x.lower() for x in j.labels} <= labels
        ]
        if not fits:
            return None
        if self.assign_order == "random":
            job = random.choice(fits)
        else:
            job = (max if self.assign_order == "newest" else min)(fits, key=lambda j: (j.created_at, j.id))
        job.status, job.started_at = "in_progress", self.github.clock()
        job.runner_id, job.runner_name = runner["id"], runner["name"]
        runner["busy"] = True
        self._webhook("in_progress", job)
        return job

    async def _job_state(self, request: Request) -> Response:
        with self.lock:
            if self._runner_of(request) is None:
                return _refused()
            job = self.jobs.get(int(request.path_params["job_id"]))
            if job is None:
                return _refused("no such job")
            return JSONResponse({"status": job.status, "cancel_requested": job.cancel_requested})

    async def _complete(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self.lock:
            found = self._runner_of(request)
            job = self.jobs.get(int(request.path_params["job_id"]))
            if found is None or job is None or job.runner_id != found[1]["id"]:
                return _refused("not this runner's job")
            if job.status == "in_progress":
                self._finish(job, str(body.get("result", "failed")))
            scope, runner = found
            runner["busy"] = False
            if runner["ephemeral"]:
                self.github.runners[scope].pop(runner["id"], None)
        return JSONResponse({"conclusion": job.conclusion})

    def _finish(self, job: WorkflowJob, result: str) -> None:
        job.status, job.completed_at = "completed", self.github.clock()
        job.conclusion = RESULTS.get(result, "failure")
        self._webhook("completed", job)


def _in_scope(repo: str, scope: str) -> bool:
    kind, _, name = scope.partition(":")
    return repo.lower() == name if kind == "repo" else repo.split("/")[0].lower() == name


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refused(message: str = "Bad credentials") -> Response:
    return JSONResponse({"message": message}, status_code=401)
