"""Workflow jobs on the Firecracker backend, on the spec-checked fake Firecracker (its guest is the real guest
agent): the host drives the steps over the guest's vsock connection, the one its events come on (see
smith/adapters/firecracker/events.py). Corpus workflows run through the same executor as ``smith run``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from smith.cli import app
from smith.domain.vms import VMShape
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig, GuestEvent
from smith.workflows.executor import Executor, RunResult
from smith.workflows.local import find_workflows, run_info, selected
from smith.workflows.machines import vm_sessions
from smith.workflows.report import ConsoleReporter
from tests.agent.firecracker_support import Rig, make_rig
from tests.workflows.conftest import copy_repo

SHAPE = VMShape("workflow", 1, 512, disk_mib=64)


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig()


async def run_corpus(rig: Rig, repo: Path, secrets: dict[str, str] | None = None) -> tuple[RunResult, str]:
    """What ``smith run REPO --event push`` does, on ``rig``'s Firecracker backend: the result and the log."""
    [workflow] = selected(find_workflows(repo, None), repo, "push", None, explicit=False)
    info = run_info(repo, workflow, "push", None, secrets=secrets or {}, vars_={}, inputs={}, action_mirror=None)
    out = io.StringIO()
    result = await Executor(info, workflow, vm_sessions(rig.vmm, SHAPE), ConsoleReporter(out)).run()
    return result, out.getvalue()


async def test_outputs_env_files_and_masking_over_vsock(rig: Rig, tmp_path: Path) -> None:
    result, log = await run_corpus(rig, copy_repo("outputs", tmp_path), {"API_TOKEN": "s3cr3t-value"})
    assert result.conclusion == "success", log
    produce = next(j for j in result.jobs if j.key == "produce")
    assert produce.outputs == {"version": "1.2.3", "notes": "line one\nline two", "legacy": "old-style"}
    assert "s3cr3t-value" not in log and "token is ***" in log
    assert "dynamic-value-77" not in log and "masked: ***" in log
    assert "env file: set-by-step" in log and "multi: a,b," in log
    assert "version 1.2.3 / success" in log and "legacy old-style" in log and "notes 2" in log
    assert "ref=refs/heads/main" in log and "event=push" in log
    assert "[consume] ✓ job consume success [" in log
    assert rig.leftovers() == [] and rig.network.in_use == {}


async def test_continue_on_error_failure_and_timeouts_over_vsock(rig: Rig, tmp_path: Path) -> None:
    result, log = await run_corpus(rig, copy_repo("failing", tmp_path))
    assert result.conclusion == "failure"
    assert {j.key: j.result for j in result.jobs} == {
        "tolerant": "success",
        "strict": "failure",
        "after": "skipped",
        "report": "success",
    }
    tolerant = next(j for j in result.jobs if j.key == "tolerant")
    assert [s[1] for s in tolerant.steps][1:] == ["success", "skipped"]  # if: failure() did not run
    assert "flaky outcome=failure conclusion=success" in log and "about to fail" in log
    assert "cleanup after failure" in log and "always runs" in log
    assert "slow outcome=failure" in log and "timed out" in log  # the guest killed the step after its timeout
    assert "tolerant=success strict=failure" in log
    assert rig.leftovers() == []


@pytest.mark.parametrize(
    ("fake_args", "config", "why"),
    [
        ((), {"vsock": False}, "this backend has vsock turned off"),
        (("--guest-vsock", "no"), {}, "the guest sent its events on the console"),
    ],
    ids=["backend-without-vsock", "guest-kernel-without-vsock"],
)
async def test_without_vsock_a_workflow_job_is_refused_naming_why(
    tmp_path: Path, fake_args: tuple[str, ...], config: dict[str, bool], why: str
) -> None:
    """The console fallback is one-way: the job fails before any step runs, saying why; nothing is left over."""
    for rig in make_rig(*fake_args, **config):
        result, log = await run_corpus(rig, copy_repo("failing", tmp_path))
        assert {j.result for j in result.jobs if j.key in ("tolerant", "strict")} == {"failure"}
        tolerant = next(j for j in result.jobs if j.key == "tolerant")
        assert "workflow steps go over the guest's vsock channel, and the serial console is one-way" in tolerant.error
        assert why in tolerant.error and "about to fail" not in log
        assert rig.leftovers() == [] and rig.network.in_use == {}


@pytest.mark.parametrize(
    ("corpus", "code", "results"),
    [
        ("outputs", 0, {"produce": "success", "consume": "success"}),
        ("failing", 1, {"tolerant": "success", "strict": "failure", "after": "skipped", "report": "success"}),
    ],
)
def test_smith_run_on_the_firecracker_backend(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: str, code: int, results: dict[str, str]
) -> None:
    """`smith run --backend firecracker`: live output, the JSON result and the exit code, on Firecracker VMs (the
    fake; the backend is built from the agent's settings, which want KVM and root: see the next test)."""
    asked: list[str] = []

    def backend(name: str, work: Path, network: bool) -> Any:
        asked.append(name)
        return rig.vmm

    monkeypatch.setattr("smith.cli.run._vmm", backend)
    repo = copy_repo(corpus, tmp_path)
    done = CliRunner().invoke(
        app, ["run", str(repo), "--backend", "firecracker", "--secret", "API_TOKEN=s3cr3t", "--json"]
    )
    assert asked == ["firecracker"]
    assert done.exit_code == code, done.stderr
    [run] = json.loads(done.stdout)
    assert {j["job"]: j["result"] for j in run["jobs"]} == results
    if corpus == "outputs":
        assert run["jobs"][0]["outputs"]["version"] == "1.2.3" and "token is ***" in done.stderr
    else:
        assert "flaky outcome=failure conclusion=success" in done.stderr
    assert f"workflow {run['workflow']}: {run['conclusion']}" in done.stderr  # the summary table
    assert rig.leftovers() == [] and rig.network.in_use == {}


def test_smith_run_builds_the_firecracker_backend_from_the_agent_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.adapters.firecracker.vmm import FirecrackerVMM
    from smith.agent.backends import _kvm_usable
    from smith.cli.run import _vmm

    usable, why = _kvm_usable("on")
    if not usable:
        pytest.skip(f"smith run takes the Firecracker backend only where KVM is usable: {why}")
    for rig in make_rig():
        config = rig.vmm.config
        monkeypatch.setenv("SMITH_AGENT_FIRECRACKER_BIN", str(config.firecracker_bin))
        monkeypatch.setenv("SMITH_AGENT_KERNEL", str(config.kernel))
        monkeypatch.setenv("SMITH_AGENT_ROOTFS", str(config.rootfs))
        monkeypatch.setenv("SMITH_AGENT_KVM", "on")  # a PVM host's /dev/kvm (the development machines) too
        vmm = _vmm("firecracker", rig.base / "run", network=False)  # short: as smith run's /tmp/smith-run-*
        assert isinstance(vmm, FirecrackerVMM) and vmm.config.vsock  # workflow steps need the vsock channel
        assert (vmm.config.firecracker_bin, vmm.config.kernel) == (config.firecracker_bin, config.kernel)


async def test_a_flooding_guest_cannot_deadlock_the_channel(rig: Rig) -> None:
    """The guest reads commands only between steps, and its writes wait while the host does not read (vsock is
    flow-controlled). The host sends a second, large command while the first still floods output, and nobody
    consumes ``events()`` meanwhile: that send can only complete once the guest has read it, i.e. once the host
    has drained every line of the flood on its own. Both steps then come through whole."""
    lines, width = 4000, 1000  # ~4 MB each way: far past the socket buffers and the writer's high-water mark
    machine = await rig.vmm.boot(SHAPE, "flood")
    try:
        job = JobSpec(id="flood", runner_class="workflow", vcpus=1, memory_mib=512, run="")
        await machine.assign(GuestConfig(job=job, steps=True))
        flood = f"head -c {lines * width} /dev/zero | tr '\\0' x | fold -w {width}"
        big = "y" * (lines * width)

        async def both() -> None:
            await machine.send({"argv": ["sh", "-c", flood]})
            await machine.send({"write": {"big.txt": big}, "argv": ["wc", "-c", "big.txt"]})

        await asyncio.wait_for(both(), 120)  # a liveness bound, not a timing: a deadlock never gets past it
        seen: list[GuestEvent] = []
        async for event in machine.events():
            if event.type in ("line", "step") and event.seq:  # the guest agent's, not the console's
                seen.append(event)
            if sum(e.type == "step" for e in seen) == 2:
                break
        flooded = [e for e in seen if e.type == "line" and e.stream == "stdout" and e.line == "x" * width]
        assert len(flooded) == lines
        assert [e.exit_code for e in seen if e.type == "step"] == [0, 0]
        assert any(e.line == f"{lines * width} big.txt" for e in seen)
        await machine.send({"end": True})
    finally:
        await machine.stop()
    assert rig.leftovers() == []


async def test_a_guest_that_reads_nothing_holds_up_only_the_send(rig: Rig) -> None:
    """A guest busy in a long step reads no command: a large send waits (flow control), its output still comes,
    and the job's end (the send cancelled, the VM stopped) leaves nothing behind."""
    machine = await rig.vmm.boot(SHAPE, "slow")
    try:
        job = JobSpec(id="slow", runner_class="workflow", vcpus=1, memory_mib=512, run="")
        await machine.assign(GuestConfig(job=job, steps=True))
        await machine.send({"argv": ["sh", "-c", "echo busy $$; exec sleep 600"]})
        pending = asyncio.ensure_future(machine.send({"write": {"big.txt": "y" * 4_000_000}}))
        async for event in machine.events():
            if event.type == "line" and event.line.startswith("busy "):
                step = int(event.line.split()[1])
                break
        assert not pending.done()  # the guest cannot have read it: it is still in its first step
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    finally:
        await machine.stop()
    assert rig.leftovers() == [] and rig.network.in_use == {}
    await until_gone(step)  # the step ended with its VM (the fake kills what the guest started, as a VM's end does)


async def until_gone(pid: int) -> None:
    for _ in range(200):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} outlived its VM")
