"""The control plane's lines about a lease or a report carry job_id and agent_id from bound context."""

from __future__ import annotations

from tests.control.conftest import Control, queued_payload
from tests.control.test_queue import lease, report
from tests.logcapture import json_lines


def test_lease_and_report_lines_carry_ids(control: Control) -> None:
    control.deliver(queued_payload(7301))
    with json_lines() as lines:
        a = control.agent("ctx-agent")
        assert lease(a) is not None
        assert report(a, "7301", "running").status_code == 200
    leased = next(line for line in lines if line["event"] == "job leased")
    state = next(line for line in lines if line["event"] == "job state")
    for line in (leased, state):
        assert line["job_id"] == "7301" and line["agent_id"] == "ctx-agent", line
