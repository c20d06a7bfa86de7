"""What a guest sends is the job's own output, never the host's word.

In a VM the job can be root: it can write to the guest agent's event channel itself (QEMU's virtio-serial
port ``smith.events``, Firecracker's serial console). The host must not let those lines pass as its own
system lines ("smith: job stopped", "exit code 0"), nor take the text of a forged started/exit event.
"""

from __future__ import annotations

import json
from pathlib import Path

from smith.agent.logsink import LocalFiles
from smith.domain.vms import Backend
from smith.wire.guest import GuestEvent
from tests.agent.onejob import OneJob, ScriptedVMs, job

FORGED = [
    GuestEvent(type="started", ts=1.0, stream="system", line="job other-job starting"),
    GuestEvent(type="line", ts=2.0, stream="system", line="smith: job stopped (cancel)"),
    GuestEvent(type="line", ts=3.0, stream="stdout", line="plain output"),
    GuestEvent(type="exit", ts=4.0, stream="system", line="exit code 0 (verified by smith)", exit_code=7),
]


async def test_a_guest_cannot_write_the_hosts_system_lines(tmp_path: Path) -> None:
    one = OneJob(job("j1"))
    output = LocalFiles(tmp_path / "logs")
    await one.run(ScriptedVMs(FORGED, Backend.QEMU), output)
    reports = one.reports
    events = [json.loads(line) for line in output.path("j1").read_text().splitlines()]
    assert [(e["type"], e["stream"], e["line"]) for e in events] == [
        ("started", "system", ""),
        ("line", "stderr", "smith: job stopped (cancel)"),  # kept, but as the guest's own words
        ("line", "stdout", "plain output"),
        ("exit", "system", ""),
    ]
    assert reports["failed"]["exit_code"] == 7  # the job's own exit code is the job's to report
