"""Several hosts on one machine: the control plane and two agents (sandbox backend), each in its own network
namespace joined by veth links, like three machines on a network. Jobs spread over both agents; one agent's
link is cut mid-job: its leases expire, its jobs are queued again and finish on the other agent.

Run under the shared lock: `flock /tmp/smith-net.lock uv run pytest tests/multihost -q`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith import tokens
from smith.adapters.redis.embedded import EmbeddedRedis
from tests.agent.netns import del_netns, new_netns, run_in, sh, skip_unless_root

WEBHOOK_SECRET = "multihost-webhook-secret-0123456789abcdef"
AGENT_SECRET = "multihost-agent-secret-0123456789abcdef"
OPERATOR_SECRET = "multihost-operator-secret-0123456789abcdef"
PORT = 8080
JOB = 'echo "start $SMITH_JOB_ID"; sleep 3; echo "done $SMITH_JOB_ID"'

pytestmark = [
    pytest.mark.slow,
    skip_unless_root(),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap for the sandbox backend"),
]


@pytest.fixture
def network() -> Iterator[dict[str, str]]:
    """Namespaces cp, a, b; a veth link cp<->a (10.77.1.0/24) and cp<->b (10.77.2.0/24)."""
    made: list[str] = []
    try:
        names = {}
        for role in ("cp", "a", "b"):
            names[role] = new_netns(f"mh{role}")
            made.append(names[role])
        for n, agent in ((1, "a"), (2, "b")):
            near, far = f"mhcp{agent}", f"mh{agent}"
            sh(
                "ip",
                "link",
                "add",
                near,
                "netns",
                names["cp"],
                "type",
                "veth",
                "peer",
                "name",
                far,
                "netns",
                names[agent],
            )
            sh("ip", "-n", names["cp"], "addr", "add", f"10.77.{n}.1/24", "dev", near)
            sh("ip", "-n", names[agent], "addr", "add", f"10.77.{n}.2/24", "dev", far)
            sh("ip", "-n", names["cp"], "link", "set", near, "up")
            sh("ip", "-n", names[agent], "link", "set", far, "up")
        yield names
    finally:
        for name in made:
            del_netns(name)


def _env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMITH_")}
    env.update({"SMITH_LOG_LEVEL": "WARNING", "SMITH_DATA_DIR": str(tmp)}, **settings)
    tmp.mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def process_in(netns: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(what: str, check: Callable[[], Any], seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if got := check():
                return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Valkey on a Unix socket: reachable from every network namespace (the control plane's alone needs it).
    Under a short directory: a socket path must fit in 108 bytes."""
    base = Path(tempfile.mkdtemp(prefix="smmh-"))
    server = EmbeddedRedis(base / "valkey")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_jobs_of_a_host_cut_off_mid_job_finish_on_the_other(
    network: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    operator = tokens.mint(OPERATOR_SECRET, scope="operator", subject="multihost", ttl_seconds=600)

    def api(method: str, path: str, **kw: Any) -> Any:
        """The operator API, called from inside the control plane's namespace."""

        def call() -> Any:
            r = httpx.request(
                method, f"http://127.0.0.1:{PORT}{path}", headers={"Authorization": f"Bearer {operator}"}, **kw
            )
            r.raise_for_status()
            return r.json()

        return run_in(network["cp"], call)

    control_env = _env(
        tmp_path / "control",
        SMITH_REDIS_URL=redis_url,
        SMITH_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SMITH_AGENT_TOKEN_SECRET=AGENT_SECRET,
        SMITH_JWT_SECRET=OPERATOR_SECRET,
        SMITH_LEASE_TTL_SECONDS="2",
        SMITH_RECLAIM_INTERVAL_SECONDS="0.5",
    )

    def agent_env(agent_id: str, n: int) -> dict[str, str]:
        return _env(
            tmp_path / agent_id,
            SMITH_CONTROL_URL=f"http://10.77.{n}.1:{PORT}",
            SMITH_AGENT_ID=agent_id,
            SMITH_AGENT_TOKEN=tokens.mint(
                AGENT_SECRET, scope="agent", subject=agent_id, ttl_seconds=600, agent_id=agent_id
            ),
            SMITH_AGENT_BACKEND="sandbox",
            SMITH_AGENT_VCPUS="2",
            SMITH_AGENT_MEMORY_MIB="4096",
            SMITH_AGENT_MAX_VMS="2",
            SMITH_AGENT_WARM_POOL="{}",
            SMITH_AGENT_LEASE_WAIT_SECONDS="2",
            SMITH_AGENT_DRAIN_SECONDS="1",
            SMITH_AGENT_SANDBOX_UID_BASE=str(300_000 + 1000 * n),
        )

    smith = [sys.executable, "-m", "smith"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process_in(
                network["cp"],
                [*smith, "control", "serve", "--host", "0.0.0.0", "--port", str(PORT)],
                control_env,
                tmp_path / "control.log",
            )
        )
        wait_for("the control plane", lambda: api("GET", "/v1/queue") is not None)
        for n, agent in ((1, "a"), (2, "b")):
            stack.enter_context(
                process_in(
                    network[agent], [*smith, "agent", "run"], agent_env(f"mh-{agent}", n), tmp_path / f"{agent}.log"
                )
            )
        wait_for("both agents", lambda: api("GET", "/v1/queue")["hosts_alive"] == 2)

        ids = [api("POST", "/v1/jobs", json={"run": JOB, "labels": ["self-hosted"]})["id"] for _ in range(4)]

        def placed() -> dict[str, str] | None:
            jobs = {j: api("GET", f"/v1/jobs/{j}") for j in ids}
            if all(job["state"] == "running" for job in jobs.values()):
                return {j: job["agent_id"] for j, job in jobs.items()}
            return None

        hosts = wait_for("all four jobs running", placed)
        on_a = sorted(j for j, host in hosts.items() if host == "mh-a")
        assert len(on_a) == 2 and sorted(hosts.values()) == ["mh-a", "mh-a", "mh-b", "mh-b"], hosts

        # Cut host a off the network, mid-job (both ends of its link down: nothing gets through either way).
        sh("ip", "-n", network["a"], "link", "set", "mha", "down")
        sh("ip", "-n", network["cp"], "link", "set", "mhcpa", "down")

        def finished() -> dict[str, dict[str, Any]] | None:
            jobs = {j: api("GET", f"/v1/jobs/{j}") for j in ids}
            return jobs if all(job["state"] in ("succeeded", "failed", "cancelled") for job in jobs.values()) else None

        final = wait_for("every job to finish", finished, seconds=60)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    for job_id, job in final.items():
        assert job["state"] == "succeeded" and job["exit_code"] == 0, (job, logs)
        assert job["agent_id"] == "mh-b", (job, logs)  # the cut-off host's jobs too
        assert job["attempts"] == (2 if job_id in on_a else 1), (job, logs)
