"""SMITH_DEV_DEMO_SCRIPT (`smith dev --demo`): the script a GitHub job runs when it has no runner credentials."""

from __future__ import annotations

from collections.abc import Callable

from tests.control.conftest import Control, operator_token, queued_payload
from tests.control.console_support import BIG


def test_the_demo_script_runs_only_for_github_jobs_without_runner_credentials(
    control_factory: Callable[..., Control],
) -> None:
    control = control_factory(dev_demo_script="echo demo")
    control.deliver(queued_payload(9601))
    agent = control.agent("host-demo")
    assert agent.post("/v1/agents/lease", json=BIG).json()["job"]["run"] == "echo demo"
    with control.client(operator_token()) as op:
        assert op.post("/v1/jobs", json={"run": "echo mine"}).status_code == 201
    assert agent.post("/v1/agents/lease", json=BIG).json()["job"]["run"] == "echo mine"  # a script job keeps its own


def test_without_it_a_github_job_carries_no_script(control: Control) -> None:
    control.deliver(queued_payload(9602))
    assert control.agent("host-plain").post("/v1/agents/lease", json=BIG).json()["job"]["run"] == ""
