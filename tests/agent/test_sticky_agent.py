"""The agent's sticky disk hooks: which jobs get them, which backends are asked, and that finish is called."""

from __future__ import annotations

from typing import Any

from smith.agent import sticky
from smith.domain.sticky import StickyPlan, StickyRequest
from smith.domain.vms import VMShape
from smith.wire.agent import JobSpec

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
