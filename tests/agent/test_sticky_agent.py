"""The agent's sticky disk hooks: which jobs get them, which backends are asked, and that finish is called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smith.agent import sticky
from smith.agent.logsink import LocalFiles
from smith.domain.sticky import StickyPlan, StickyRequest
from smith.domain.vms import Backend, VMShape
from smith.ports import Machine
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestEvent
from tests.agent.onejob import OneJob, ScriptedVM, ScriptedVMs, job

SHAPE = VMShape("c", 1, 512)


def spec(*labels: str) -> JobSpec:
    return JobSpec(id="j", runner_class="c", vcpus=1, memory_mib=512, labels=list(labels), org="acme", repo="acme/a")


class WithSticky:
    backend = "qemu"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def boot(self, shape: VMShape, vm_id: str, *, sticky: StickyPlan | None = None) -> Any:
        self.calls.append({"vm": vm_id, "sticky": sticky})
        return Finishing()


class Without:
    backend = "sandbox"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def boot(self, shape: VMShape, vm_id: str) -> Any:
        self.calls.append(vm_id)
        return object()


class Finishing:
    def __init__(self) -> None:
        self.finished: list[bool] = []

    async def finish(self, succeeded: bool) -> list[str]:
        self.finished.append(succeeded)
        return []


def test_a_plan_comes_from_the_labels_scoped_to_the_repository() -> None:
    assert sticky.plan(spec("self-hosted")) is None
    assert sticky.plan(spec("self-hosted", "sticky:deps:/cache:1G")) == StickyPlan(
        "acme", "acme/a", (StickyRequest("deps", "/cache", 1024),)
    )
    assert sticky.plan(spec("sticky:deps")) is None  # malformed: logged, the job runs without


async def test_backends_with_sticky_disks_get_the_plan_others_boot_plainly() -> None:
    vmm = WithSticky()
    machine = await sticky.boot(vmm, SHAPE, "vm1", spec("sticky:deps:/cache"))  # type: ignore[arg-type]
    assert vmm.calls[0]["sticky"].disks[0].name == "deps"
    await sticky.finish(machine, True)
    assert machine.finished == [True]  # type: ignore[attr-defined]
    plain = Without()
    await sticky.boot(plain, SHAPE, "vm2", spec("sticky:deps:/cache"))  # type: ignore[arg-type]
    assert plain.calls == ["vm2"]
    await sticky.finish(object(), False)  # type: ignore[arg-type]  (nothing to finish: no error)


class StickyVMs(ScriptedVMs):
    """A backend with sticky disks whose VMs replay ``events`` and record how the job ended."""

    def __init__(self, events: list[GuestEvent]) -> None:
        super().__init__(events, Backend.QEMU)
        self.booted: list[StickyPlan | None] = []
        self.order: list[str] = []

    async def boot(self, shape: VMShape, vm_id: str, *, sticky: StickyPlan | None = None) -> Machine:  # type: ignore[override]
        self.booted.append(sticky)
        order = self.order

        class VM(ScriptedVM):
            async def finish(self, succeeded: bool) -> list[str]:
                order.append(f"finish {succeeded}")
                return []

            async def stop(self) -> None:
                order.append("stop")

        return VM(vm_id, self.events)


@pytest.mark.parametrize(("code", "succeeded"), [(0, True), (3, False)])
async def test_the_agent_boots_sticky_jobs_with_their_disks_and_finishes_them_before_stop(
    tmp_path: Path, code: int, succeeded: bool
) -> None:
    events = [GuestEvent(type="started", ts=1.0), GuestEvent(type="exit", ts=2.0, exit_code=code)]
    vms = StickyVMs(events)
    spec = {**job("s1"), "labels": ["smith-2vcpu", "sticky:deps:/cache:1G"], "org": "acme", "repo": "acme/a"}
    await OneJob(spec).run(vms, LocalFiles(tmp_path / "logs"))
    assert vms.booted == [StickyPlan("acme", "acme/a", (StickyRequest("deps", "/cache", 1024),))]
    assert vms.order == [f"finish {succeeded}", "stop"]
