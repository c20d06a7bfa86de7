"""Workflow jobs on the QEMU backend (software emulation): the host drives their steps over the config port, one
fresh VM per job. A small workflow, and two corpus workflows with several jobs (needs, outputs between jobs,
environment files, workflow commands, masking, failing steps, timeouts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import GuestImage, build_image, find_inputs
from smith.workflows.context import RunInfo
from smith.workflows.executor import Executor, RunResult
from smith.workflows.local import find_workflows, run_info, selected
from smith.workflows.machines import vm_sessions
from smith.workflows.model import Workflow
from smith.workflows.parser import parse
from smith.workflows.report import ConsoleReporter
from tests.workflows.conftest import copy_repo

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64 (qemu-system-x86)"),
]

WORKFLOW = """
on: push
jobs:
  first:
    runs-on: x
    outputs:
      kernel: ${{ steps.k.outputs.kernel }}
    steps:
      - id: k
        run: |
          echo "kernel=$(uname -r)" >> "$GITHUB_OUTPUT"
          echo "in a VM: $(cat /proc/1/comm) secret=${{ secrets.S }}"
      - run: echo "first saw ${{ steps.k.outputs.kernel }}"
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    try:
        return build_image(tmp_path_factory.mktemp("image"), find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")


async def run_on_qemu(info: RunInfo, workflow: Workflow, image: GuestImage, base: Path) -> RunResult:
    vmm = QemuVMM(base, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg"))
    shape = VMShape("workflow", 1, 1024, 1024)
    return await Executor(info, workflow, vm_sessions(vmm, shape), ConsoleReporter()).run()


async def run_corpus(name: str, tmp_path: Path, image: GuestImage, base: Path, **secrets: str) -> RunResult:
    """A corpus repository's push workflow, as `smith run` prepares it, on QEMU."""
    repo = copy_repo(name, tmp_path)
    [workflow] = selected(find_workflows(repo, None), repo, "push", None, False)
    info = run_info(repo, workflow, "push", None, secrets=secrets, vars_={}, inputs={}, action_mirror=None)
    return await run_on_qemu(info, workflow, image, base)


@pytest.mark.timeout(180)
async def test_workflow_on_qemu(
    tmp_path: Path, qemu_base: Path, image: GuestImage, capsys: pytest.CaptureFixture[str]
) -> None:
    info = RunInfo(tmp_path, "o/r", "push", {}, "0" * 40, "refs/heads/main", "wf", "wf.yml", secrets={"S": "hush-hush"})
    result = await run_on_qemu(info, parse(WORKFLOW), image, qemu_base)
    log = capsys.readouterr().out
    assert result.conclusion == "success", log
    kernel = next(j for j in result.jobs if j.key == "first").outputs["kernel"]
    assert kernel and f"first saw {kernel}" in log
    assert "secret=***" in log and "hush-hush" not in log


async def test_corpus_outputs_on_qemu(
    tmp_path: Path, qemu_base: Path, image: GuestImage, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two jobs in needs order: step and job outputs (a multi-line one), GITHUB_ENV, workflow commands, masks."""
    result = await run_corpus("outputs", tmp_path, image, qemu_base, API_TOKEN="s3cr3t-value")
    log = capsys.readouterr().out
    assert result.conclusion == "success", log
    assert "s3cr3t-value" not in log and "token is ***" in log
    assert "dynamic-value-77" not in log and "masked: ***" in log
    assert "env file: set-by-step" in log and "multi: a,b," in log
    assert "::warning::not a command now" in log and "Notice: commands back" in log
    assert "version 1.2.3 / success" in log and "legacy old-style" in log and "notes 2" in log
    assert next(j for j in result.jobs if j.key == "produce").outputs["notes"] == "line one\nline two"


async def test_corpus_failing_steps_on_qemu(
    tmp_path: Path, qemu_base: Path, image: GuestImage, capsys: pytest.CaptureFixture[str]
) -> None:
    """continue-on-error, failure()/always(), a step timeout, a job skipped by a failed need, and one that runs."""
    result = await run_corpus("failing", tmp_path, image, qemu_base)
    log = capsys.readouterr().out
    assert result.conclusion == "failure"
    results = {j.key: j.result for j in result.jobs}
    assert results == {"tolerant": "success", "strict": "failure", "after": "skipped", "report": "success"}, log
    assert "flaky outcome=failure conclusion=success" in log
    assert "cleanup after failure" in log and "always runs" in log
    assert "slow outcome=failure" in log and "timed out" in log
    assert "tolerant=success strict=failure" in log
