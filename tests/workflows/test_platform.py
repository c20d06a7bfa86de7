"""End to end: a signed ``pull_request`` webhook for a configured local repository -> its workflow's jobs run as
Smith jobs in Smith VMs (real agent, sandbox backend, embedded Valkey) in ``needs`` order, the first job's output
passed to the second -> step logs in the log pipeline (chdb) -> commit statuses pending then success/failure
on the fake GitHub. The control plane is restarted between the two jobs.

The pull_request payload is written here, modelled on GitHub's documented ``pull_request`` webhook payload (the
shared fixtures hold no pull_request delivery): the fields the executor and the triggers read, with real shapes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.adapters.chdb import ChdbClickHouse
from smith.adapters.github import GitHubApp
from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.adapters.sandbox import SandboxVMM
from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logship import LogShipper
from smith.agent.logsink import Fanout, LocalFiles
from smith.control.app import create_app
from smith.control.settings import RunnerClassSpec
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.logs.app import create_app as create_logs_app
from smith.logs.settings import LogsSettings
from smith.testing.github import FakeGitHub
from smith.testing.servers import ThreadedServer
from tests.agent.firecracker_support import make_rig
from tests.control.conftest import APP_ID, INSTALLATION, agent_token, github_app, make_settings, operator_token, signed
from tests.logs.conftest import AGENT_SECRET as LOGS_AGENT_SECRET
from tests.logs.conftest import JWT_SECRET as LOGS_JWT_SECRET
from tests.logs.conftest import operator_token as logs_operator_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)"),
]

REPO = "Codertocat/Hello-World"  # where the fake GitHub has the App installed
QEMU_CLASS = "wf-qemu-test"  # the QEMU variant's own runner class (see the platform fixture)

CI = """\
name: CI
on:
  pull_request:
    branches: [main]
jobs:
  build:
    runs-on: ubuntu-latest
    outputs:
      version: ${{ steps.v.outputs.version }}
    steps:
      - uses: actions/checkout@v4
      - id: v
        name: Read the version
        run: echo "version=$(cat VERSION)" >> "$GITHUB_OUTPUT"
      - run: echo "built $(cat VERSION) at $GITHUB_SHA"
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - name: Test
        run: |
          echo "testing version ${{ needs.build.outputs.version }}"
          test "${{ needs.build.outputs.version }}" = "1.2.3"
"""

FAILING = """\
name: Lint
on: pull_request
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: echo "lint found 3 problems"; exit 3
"""


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(base: Path, workflows: dict[str, str]) -> tuple[Path, str, str]:
    """A git repository with a main branch and a feature branch holding the workflows: (path, base, head)."""
    repo = base / "hello-world"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    base_sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-qb", "feature")
    (repo / "VERSION").write_text("1.2.3\n")
    for name, text in workflows.items():
        (repo / ".github" / "workflows").mkdir(parents=True, exist_ok=True)
        (repo / ".github" / "workflows" / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "feature")
    return repo, base_sha, git(repo, "rev-parse", "HEAD")


def moved_on(base: Path, workflows: dict[str, str]) -> tuple[Path, str, str]:
    """``make_repo``, then main gets a commit after the feature branch was cut: (path, base, head)."""
    repo, _, head = make_repo(base, workflows)
    git(repo, "checkout", "-q", "main")
    (repo / "BASE_NOTE").write_text("from main\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main moved on")
    base_sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "feature")
    return repo, base_sha, head


def pull_request_payload(number: int, base_sha: str, head_sha: str, action: str = "opened") -> dict[str, Any]:
    owner, name = REPO.split("/")
    repository = {
        "id": 1296269,
        "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
        "name": name,
        "full_name": REPO,
        "private": False,
        "owner": {"login": owner, "id": 21031067, "type": "User"},
        "html_url": f"https://github.com/{REPO}",
        "default_branch": "main",
    }
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{REPO}/pulls/{number}",
            "id": 279147437,
            "number": number,
            "state": "open",
            "title": "Update the version",
            "user": {"login": owner, "id": 21031067, "type": "User"},
            "head": {"label": f"{owner}:feature", "ref": "feature", "sha": head_sha, "repo": repository},
            "base": {"label": f"{owner}:main", "ref": "main", "sha": base_sha, "repo": repository},
            "draft": False,
            "merged": False,
        },
        "repository": repository,
        "sender": {"login": owner, "id": 21031067, "type": "User"},
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMzQ1Njk5Ng=="},
    }


@dataclass
class Platform:
    control: ThreadedServer
    make_control: Any
    logs: ThreadedServer
    fake: FakeGitHub
    agent: Agent

    def deliver(self, payload: dict[str, Any], delivery: str) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = signed(body, "pull_request", delivery)
        return httpx.post(self.control.url + "/webhooks/github", content=body, headers=headers, timeout=30)

    def restart_control(self) -> None:
        port = self.control.port
        self.control.stop()
        self.control = ThreadedServer(self.make_control(), port=port)
        self.control.start()

    async def operator(self, path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=self.control.url, headers={"Authorization": f"Bearer {operator_token()}"}, timeout=30
        ) as c:
            r = await c.get(path)
            r.raise_for_status()
            return dict(r.json())

    async def runs_of(self, delivery: str) -> list[str]:
        """The runs a delivery started, once the trigger worker has started them."""
        deadline = time.monotonic() + 60
        while True:
            view = await self.operator(f"/v1/workflows/triggers/{delivery}")
            if view["state"] != "pending" or time.monotonic() > deadline:
                assert view["state"] == "done", view
                return list(view["runs"])
            await asyncio.sleep(0.05)

    async def wait_run(self, run_id: str, until: Any, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = await self.operator(f"/v1/workflows/runs/{run_id}")
            except httpx.HTTPError:
                run = {}
            if run and until(run):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} never got there: {run}")
            await asyncio.sleep(0.1)

    async def statuses(self, count: int) -> list[dict[str, Any]]:
        """The commit statuses once there are ``count`` (the last one follows the run's end)."""
        deadline = time.monotonic() + 30
        while len(self.fake.statuses) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return list(self.fake.statuses)

    async def log_lines_now(self, job_id: str) -> str:
        """What the log pipeline has of a job's log so far, as one text."""
        async with httpx.AsyncClient(
            base_url=self.logs.url, headers={"Authorization": f"Bearer {logs_operator_token()}"}, timeout=30
        ) as reader:
            page = (await reader.get(f"/v1/jobs/{job_id}/logs", params={"limit": 1000})).json()
            return "\n".join(x["line"] for x in page.get("lines", []))

    async def log_lines(self, job_id: str) -> list[str]:
        async with httpx.AsyncClient(
            base_url=self.logs.url, headers={"Authorization": f"Bearer {logs_operator_token()}"}, timeout=30
        ) as reader:
            deadline = time.monotonic() + 60  # the shipper's last batch may still be on its way
            while True:
                page = (await reader.get(f"/v1/jobs/{job_id}/logs", params={"limit": 1000})).json()
                if page.get("complete") or time.monotonic() > deadline:
                    return [x["line"] for x in page["lines"]]
                await asyncio.sleep(0.1)


@pytest.fixture
async def platform(
    redis_url: str, tmp_path: Path, chdb_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Platform]:
    workflows: dict[str, str] = request.param["workflows"]
    vmm: Any = SandboxVMM(tmp_path / "sbx")
    # The QEMU variant's jobs go to a runner class of its own, and its agent serves that class alone: were it ever
    # left running, it could take no other test's jobs from the shared Valkey.
    classes, labels = {}, ()
    if request.param.get("backend") == "qemu":
        vmm = qemu_vmm(tmp_path, request.getfixturevalue("qemu_base"))
        classes = {QEMU_CLASS: RunnerClassSpec(vcpus=1, memory_mib=1024, disk_mib=1024)}
        labels = (QEMU_CLASS,)
    if request.param.get("backend") == "firecracker":
        vmm = firecracker_vmm(request)
    repo, base_sha, head_sha = (moved_on if request.param.get("moved_on") else make_repo)(tmp_path, workflows)
    config = tmp_path / "workflow-repos.yml"
    entry = {"repository": REPO, "source": str(repo), **({"labels": list(labels)} if labels else {})}
    config.write_text(json.dumps({"repositories": [entry]}))
    logs_settings = LogsSettings(
        agent_token_secret=LOGS_AGENT_SECRET,
        jwt_secret=LOGS_JWT_SECRET,
        clickhouse_database=f"t_{uuid.uuid4().hex[:12]}",
        logs_batch_delay_seconds=0.02,
    )
    with (
        github_app() as (fake, credentials),
        ThreadedServer(create_logs_app(logs_settings, clickhouse=ChdbClickHouse(chdb_dir))) as logs,
    ):
        settings = make_settings(
            redis_url,
            workflow_repos=config,
            logs_url=logs.url,
            logs_token_secret=LOGS_AGENT_SECRET,
            lease_ttl_seconds=30,  # the restart must not look like a lost agent
            **({"runner_classes": classes} if classes else {}),
        )

        def make_control() -> Any:  # a restarted control plane has a client of its own (stop() closes one)
            client = GitHubApp(APP_ID, credentials._key, api_url=credentials.api_url, web_url="https://github.com")
            return create_app(settings, credentials=client)

        control = ThreadedServer(make_control())
        control.start()
        output = Fanout(LocalFiles(tmp_path / "logs"), LogShipper(logs.url, None, tmp_path / "spool", host="wf"))
        agent = Agent(
            AgentConfig(
                agent_id="wf-host",
                hostname="wf-host",
                vcpus=4,
                memory_mib=8192,
                max_vms=2,
                lease_wait_seconds=2,
                labels=labels,
                drain_seconds=5,  # at the end a job still running (a failed test's) is stopped soon
            ),
            ControlClient(control.url, agent_token("wf-host")),
            vmm,
            output,
        )
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.registered.wait(), 30)
        p = Platform(control, make_control, logs, fake, agent)
        p.repo, p.base_sha, p.head_sha = repo, base_sha, head_sha  # type: ignore[attr-defined]
        try:
            yield p
        finally:
            try:
                await asyncio.wait_for(agent.shutdown(), 90)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                p.control.stop()


def qemu_vmm(tmp_path: Path, base: Path) -> Any:
    """A QEMU microvm backend on a guest image built here (TCG: no KVM needed); skips where none can be built."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64 (qemu-system-x86)")
    try:
        image = build_image(tmp_path / "image", find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    return QemuVMM(base, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg"))


def firecracker_vmm(request: pytest.FixtureRequest) -> Any:
    """The Firecracker backend on the fake Firecracker (its guest is the real guest agent; no root or KVM)."""
    rigs = make_rig()
    rig = next(rigs)
    request.addfinalizer(rigs.close)  # after the platform's own teardown (the agent stops its VMs first)
    return rig.vmm


@pytest.mark.qemu
@pytest.mark.parametrize("platform", [{"workflows": {"ci.yml": CI}, "backend": "qemu"}], indirect=True)
async def test_pull_request_jobs_on_qemu(platform: Platform) -> None:
    """The same run on the QEMU backend: checkout copied into the VM, the output passed, logs, statuses."""
    p = platform
    await asyncio.to_thread(p.deliver, pull_request_payload(9, p.base_sha, p.head_sha), "d-9")  # type: ignore[attr-defined]
    [run_id] = await p.runs_of("d-9")
    run = await p.wait_run(run_id, lambda run: run["state"] == "completed", timeout=180)
    assert run["conclusion"] == "success", run
    [build_id], [test_id] = run["jobs"]["build"]["smith_jobs"], run["jobs"]["test"]["smith_jobs"]
    assert (await p.operator(f"/v1/jobs/{build_id}"))["runner_class"] == QEMU_CLASS
    assert f"built 1.2.3 at {run['sha']}" in await p.log_lines(build_id)  # the merge commit
    assert "testing version 1.2.3" in await p.log_lines(test_id)
    assert [s["state"] for s in await p.statuses(2)] == ["pending", "success"]


@pytest.mark.parametrize("platform", [{"workflows": {"ci.yml": CI}}], indirect=True)
async def test_pull_request_runs_jobs_in_needs_order_through_a_restart(platform: Platform) -> None:
    p = platform
    payload = pull_request_payload(7, p.base_sha, p.head_sha)  # type: ignore[attr-defined]
    r = await asyncio.to_thread(p.deliver, payload, "delivery-7")
    assert r.status_code == 202 and r.json()["outcome"] == "triggered", r.text
    [run_id] = await p.runs_of("delivery-7")
    # The build job has run and its output is recorded; restart the control plane before test runs (or ends).
    run = await p.wait_run(run_id, lambda run: run["jobs"]["build"]["state"] == "done")
    assert run["jobs"]["build"] == {**run["jobs"]["build"], "result": "success", "outputs": {"version": "1.2.3"}}
    p.restart_control()
    run = await p.wait_run(run_id, lambda run: run["state"] == "completed")
    assert run["conclusion"] == "success", run
    assert run["jobs"]["test"]["result"] == "success"
    [build_id], [test_id] = run["jobs"]["build"]["smith_jobs"], run["jobs"]["test"]["smith_jobs"]
    build = await p.operator(f"/v1/jobs/{build_id}")
    test = await p.operator(f"/v1/jobs/{test_id}")
    assert build["state"] == test["state"] == "succeeded"
    assert build["finished_at"] <= test["created_at"]  # needs order: test was queued once build had finished
    build_log, test_log = await p.log_lines(build_id), await p.log_lines(test_id)
    assert "▶ Read the version" in build_log
    assert f"built 1.2.3 at {run['sha']}" in build_log  # the merge commit
    assert "testing version 1.2.3" in test_log
    assert any(x.startswith("✓ Test: success [") for x in test_log)
    assert any(x.startswith("✓ job test: success [") for x in test_log)
    statuses = [(s["state"], s["context"], s["sha"]) for s in await p.statuses(2)]
    assert statuses == [("pending", "smith/CI", p.head_sha), ("success", "smith/CI", p.head_sha)]  # type: ignore[attr-defined]
    # Each job is a check run on the pull request's head, completed with its conclusion (across the restart).
    checks = [(c["name"], c["status"], c["conclusion"], c["head_sha"]) for c in p.fake.checks.runs.values()]
    assert sorted(checks) == [
        ("CI / build", "completed", "success", p.head_sha),
        ("CI / test", "completed", "success", p.head_sha),
    ]  # type: ignore[attr-defined]
    # A redelivery of the same webhook starts nothing again.
    again = await asyncio.to_thread(p.deliver, payload, "delivery-7")
    assert again.json()["outcome"] == "duplicate"


@pytest.mark.parametrize("platform", [{"workflows": {"lint.yml": FAILING}}], indirect=True)
async def test_a_failing_workflow_reports_failure(platform: Platform) -> None:
    p = platform
    await asyncio.to_thread(p.deliver, pull_request_payload(8, p.base_sha, p.head_sha), "d-8")  # type: ignore[attr-defined]
    [run_id] = await p.runs_of("d-8")
    run = await p.wait_run(run_id, lambda run: run["state"] == "completed")
    assert run["conclusion"] == "failure" and run["jobs"]["lint"]["result"] == "failure"
    [lint_id] = run["jobs"]["lint"]["smith_jobs"]
    log = await p.log_lines(lint_id)
    assert "lint found 3 problems" in log and "Error: Process completed with exit code 3." in log
    assert [s["state"] for s in await p.statuses(2)] == ["pending", "failure"]
    assert p.fake.statuses[-1]["description"] == "failed: lint"


@pytest.mark.parametrize(
    "platform", [{"workflows": {"ci.yml": CI, "lint.yml": FAILING}, "backend": "firecracker"}], indirect=True
)
async def test_pull_request_jobs_on_firecracker(platform: Platform) -> None:
    """The runs on the Firecracker backend (the fake): steps over vsock, checkout copied in, the output passed on,
    a failing step's exit code, step logs in the pipeline, a status per workflow."""
    p = platform
    await asyncio.to_thread(p.deliver, pull_request_payload(10, p.base_sha, p.head_sha), "d-10")  # type: ignore[attr-defined]
    runs = [await p.wait_run(run_id, lambda run: run["state"] == "completed") for run_id in await p.runs_of("d-10")]
    ci, lint = sorted(runs, key=lambda run: "lint" in run["jobs"])
    assert ci["conclusion"] == "success", ci
    assert ci["jobs"]["build"]["outputs"] == {"version": "1.2.3"}
    [build_id], [test_id] = ci["jobs"]["build"]["smith_jobs"], ci["jobs"]["test"]["smith_jobs"]
    build_log, test_log = await p.log_lines(build_id), await p.log_lines(test_id)
    assert "▶ Read the version" in build_log and f"built 1.2.3 at {ci['sha']}" in build_log  # the merge commit
    assert "testing version 1.2.3" in test_log and any(x.startswith("✓ job test: success [") for x in test_log)
    assert lint["conclusion"] == "failure" and lint["jobs"]["lint"]["result"] == "failure"
    [lint_id] = lint["jobs"]["lint"]["smith_jobs"]
    lint_log = await p.log_lines(lint_id)
    assert "lint found 3 problems" in lint_log and "Error: Process completed with exit code 3." in lint_log
    finals = {s["context"]: s["state"] for s in (await p.statuses(4))[-4:] if s["state"] != "pending"}
    assert finals == {"smith/CI": "success", "smith/Lint": "failure"}


MERGE = """\
name: Merge
on: pull_request
jobs:
  look:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          echo "head file: $(cat VERSION)"
          echo "base file: $(cat BASE_NOTE)"
          echo "sha=$GITHUB_SHA ref=$GITHUB_REF head=$GITHUB_HEAD_REF base=$GITHUB_BASE_REF"
"""


@pytest.mark.parametrize("platform", [{"workflows": {"merge.yml": MERGE}, "moved_on": True}], indirect=True)
async def test_a_pull_request_whose_base_moved_on_runs_on_the_merge_commit(platform: Platform) -> None:
    """GitHub runs pull_request workflows on refs/pull/N/merge: the job sees the files of both branches."""
    p = platform
    await asyncio.to_thread(p.deliver, pull_request_payload(11, p.base_sha, p.head_sha), "d-11")  # type: ignore[attr-defined]
    [run_id] = await p.runs_of("d-11")
    run = await p.wait_run(run_id, lambda run: run["state"] == "completed")
    assert run["conclusion"] == "success", run
    [look_id] = run["jobs"]["look"]["smith_jobs"]
    log = await p.log_lines(look_id)
    assert "head file: 1.2.3" in log and "base file: from main" in log, log
    assert f"sha={run['sha']} ref=refs/pull/11/merge head=feature base=main" in log
    assert run["sha"] not in (p.base_sha, p.head_sha)  # type: ignore[attr-defined]
    assert [(s["state"], s["sha"]) for s in await p.statuses(2)] == [("pending", p.head_sha), ("success", p.head_sha)]  # type: ignore[attr-defined]


SLOW = """\
name: Slow
on: pull_request
jobs:
  wait:
    runs-on: ubuntu-latest
    steps:
      - run: echo started; sleep 600
  after:
    needs: wait
    runs-on: ubuntu-latest
    steps:
      - run: echo never
"""


@pytest.mark.parametrize("platform", [{"workflows": {"slow.yml": SLOW}}], indirect=True)
async def test_cancelling_a_run_stops_its_running_job_in_the_vm(platform: Platform) -> None:
    p = platform
    await asyncio.to_thread(p.deliver, pull_request_payload(12, p.base_sha, p.head_sha), "d-12")  # type: ignore[attr-defined]
    [run_id] = await p.runs_of("d-12")
    run = await p.wait_run(run_id, lambda run: run["jobs"]["wait"]["smith_jobs"])
    [wait_id] = run["jobs"]["wait"]["smith_jobs"]
    deadline = time.monotonic() + 60
    while "started" not in await p.log_lines_now(wait_id):
        assert time.monotonic() < deadline, "the step never started"
        await asyncio.sleep(0.1)
    async with httpx.AsyncClient(
        base_url=p.control.url, headers={"Authorization": f"Bearer {operator_token()}"}, timeout=30
    ) as c:
        r = await c.post(f"/v1/workflows/runs/{run_id}/cancel", json={"reason": "not needed"})
        assert r.status_code == 200, r.text
    run = await p.wait_run(run_id, lambda run: run["state"] == "completed")
    assert run["conclusion"] == "cancelled", run
    assert run["jobs"]["wait"]["result"] == "cancelled" and run["jobs"]["after"]["smith_jobs"] == []
    assert (await p.operator(f"/v1/jobs/{wait_id}"))["state"] == "cancelled"
    assert [s["state"] for s in await p.statuses(2)] == ["pending", "error"]
    [check] = p.fake.checks.named("Slow / wait")
    assert (check["status"], check["conclusion"]) == ("completed", "cancelled")
