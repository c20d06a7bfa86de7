"""An agent's log lines carry job_id, agent_id and vm_id from bound context: a backend that names none of them
still has them on its lines, and a line outside a job has no job_id."""

from __future__ import annotations

import time
from pathlib import Path

from smith.agent.logsink import LocalFiles
from smith.domain.vms import VMShape
from smith.logging import get_logger
from smith.ports import Machine
from smith.wire.guest import GuestConfig, GuestEvent
from tests.agent.onejob import OneJob, ScriptedVM, ScriptedVMs, job
from tests.logcapture import json_lines

EVENTS = [GuestEvent(type="exit", ts=time.time(), exit_code=0)]
backend_log = get_logger("smith.adapters.test-backend")


class ChattyVM(ScriptedVM):
    async def assign(self, config: GuestConfig) -> None:
        backend_log.info("guest given its job")  # as a backend logs: no ids passed


class ChattyVMs(ScriptedVMs):
    async def boot(self, shape: VMShape, vm_id: str) -> Machine:
        return ChattyVM(vm_id, self.events)


async def test_job_lines_carry_bound_ids(tmp_path: Path) -> None:
    with json_lines() as lines:
        await OneJob(job("ctx-1")).run(ChattyVMs(EVENTS), LocalFiles(tmp_path / "logs"))
    by_event = {line["event"]: line for line in lines}
    assigned = by_event["guest given its job"]
    assert (assigned["job_id"], assigned["agent_id"], assigned["vm_id"]) == ("ctx-1", "h", "job-ctx-1-1")
    assert by_event["job finished"]["job_id"] == "ctx-1"
    registered = by_event["agent registered"]
    assert registered["agent_id"] == "h" and "job_id" not in registered
