"""A built-in workflow job on a machine that cannot drive steps (no way to send the guest a command) is refused
with a clear message before anything runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.agent.workflowjob import drive
from smith.errors import VMError
from smith.wire import agent as wire


class NoSteps:
    """A machine with events but no way to send the guest a command."""

    id = "fc-1"


def workflow_lease(tmp_path: Path) -> wire.LeaseResponse:
    spec = wire.WorkflowJobSpec(
        run_id="abc",
        workflow="on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo hi\n",
        file=".github/workflows/ci.yml",
        job="a",
        key="a",
        event_name="push",
        repository="o/r",
        sha="0" * 40,
        ref="refs/heads/main",
        source=str(tmp_path / "nowhere"),
        secrets={"DEPLOY_TOKEN": "hush-hush"},
    )
    return wire.LeaseResponse(
        job=wire.JobSpec(id="wf-abc-a-0", runner_class="c", vcpus=1, memory_mib=512, steps=spec),
        lease_ttl_seconds=30,
    )


async def test_a_backend_without_steps_is_refused(tmp_path: Path) -> None:
    lease = workflow_lease(tmp_path)
    with pytest.raises(VMError, match="cannot drive a job step by step"):
        await drive(NoSteps(), lease, LocalFiles(tmp_path / "logs"))  # type: ignore[arg-type]


def test_the_guest_gets_steps_mode_but_not_the_jobs_secrets(tmp_path: Path) -> None:
    """The guest is driven command by command: the workflow, its secrets and vars never enter the VM whole."""
    agent = SimpleNamespace(config=AgentConfig(agent_id="a", hostname="h", vcpus=1, memory_mib=512, max_vms=1))
    config = Agent.guest_config(agent, workflow_lease(tmp_path))  # type: ignore[arg-type]
    assert config.steps and config.job.steps is None
    assert "hush-hush" not in config.model_dump_json()
