"""Workflow jobs on the Firecracker backend, on the spec-checked fake Firecracker (its guest is the real guest
agent): the host drives the steps over the guest's vsock connection, the one its events come on (see
smith/adapters/firecracker/events.py). Corpus workflows run through the same executor as ``smith run``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.domain.vms import VMShape
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
