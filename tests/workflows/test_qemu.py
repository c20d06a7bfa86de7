"""A workflow job on the QEMU backend (software emulation): the host drives its steps over the config port
(one VM: jobs in needs order are covered on the sandbox)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.workflows.context import RunInfo
from smith.workflows.executor import Executor
from smith.workflows.machines import vm_sessions
from smith.workflows.parser import parse
from smith.workflows.report import ConsoleReporter

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


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))  # Unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
@pytest.mark.xfail(
    strict=False,
    reason="intermittent: under software emulation the guest sometimes never announces ready after its init started "
    "(in 3 of the last 4 full runs, never when run alone; the agent-driven QEMU workflow test in test_platform.py "
    "passes); not explained yet",
)
async def test_workflow_on_qemu(tmp_path: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        image = build_image(tmp_path / "image", find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    vmm = QemuVMM(short_dir, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg"))
    info = RunInfo(tmp_path, "o/r", "push", {}, "0" * 40, "refs/heads/main", "wf", "wf.yml", secrets={"S": "hush-hush"})
    shape = VMShape("workflow", 1, 1024, 1024)
    result = await Executor(info, parse(WORKFLOW), vm_sessions(vmm, shape), ConsoleReporter()).run()
    log = capsys.readouterr().out
    assert result.conclusion == "success", log
    kernel = next(j for j in result.jobs if j.key == "first").outputs["kernel"]
    assert kernel and f"first saw {kernel}" in log
    assert "secret=***" in log and "hush-hush" not in log
