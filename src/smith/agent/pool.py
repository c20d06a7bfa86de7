"""Warm pools: per runner class, VMs booted ahead of jobs, kept at a desired size by a reconcile loop.

A warm VM holds its share of the host's capacity. It can be evicted to make room for a job of another class,
so warm VMs never stop the host from taking work it has room for.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping

from smith.agent.capacity import Ledger
from smith.domain.vms import VMShape
from smith.errors import SmithError
from smith.logging import get_logger
from smith.ports import VMM, Machine

log = get_logger("smith.agent.pool")


class WarmPool:
    def __init__(self, vmm: VMM, ledger: Ledger, shapes: Mapping[str, VMShape], desired: Mapping[str, int]) -> None:
        self.vmm = vmm
        self.ledger = ledger
        self.shapes = dict(shapes)
        self.desired = {k: v for k, v in desired.items() if k in self.shapes and v > 0}
        self.ready: dict[str, list[Machine]] = {k: [] for k in self.shapes}
        self.booting: dict[str, int] = dict.fromkeys(self.shapes, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._boots: dict[asyncio.Task[None], str] = {}  # warm boots in flight, by class
        self.held = 0  # while > 0 (a leased job is being given room), no refill starts
        self.changed = asyncio.Event()

    def idle(self) -> list[tuple[str, Machine]]:
        return [(cls, m) for cls, ms in self.ready.items() for m in ms]

    def idle_capacity(self) -> tuple[int, int, int]:
        """vCPUs, memory and VM slots held by idle warm VMs (they can be given up for a job)."""
        vms = self.idle()
        return (sum(self.shapes[c].vcpus for c, _ in vms), sum(self.shapes[c].memory_mib for c, _ in vms), len(vms))

    def prune(self) -> int:
        """Drop warm VMs that died while they waited (a sandbox killed or refused, a QEMU that crashed): given a
        job, each would fail it. Their room is freed at once; the reconcile loop boots replacements."""
        dropped = 0
        for cls, machine in self.idle():
            alive = getattr(machine, "alive", None)
            if alive is None or alive():
                continue
            self.ready[cls].remove(machine)
            self.ledger.release(self.shapes[cls])
            task = asyncio.ensure_future(machine.stop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            log.warning("warm VM died while idle; dropped", runner_class=cls, machine=machine.id)
            dropped += 1
        if dropped:
            self.changed.set()
        return dropped

    def take(self, runner_class: str) -> Machine | None:
        """A warm VM for this class (a live one); its capacity reservation passes to the caller."""
        self.prune()
        ms = self.ready.get(runner_class)
        if ms:
            machine = ms.pop(0)
            self.changed.set()
            return machine
        return None

    async def evict_for(self, shape: VMShape) -> bool:
        """Stop idle warm VMs (other classes first) until ``shape`` fits; False if it never will."""
        for cls, machine in sorted(self.idle(), key=lambda cm: cm[0] == shape.runner_class):
            if self.ledger.fits(shape):
                break
            self.ready[cls].remove(machine)
            await machine.stop()
            self.ledger.release(self.shapes[cls])
            log.info("evicted warm VM to make room", runner_class=cls, machine=machine.id)
        self.changed.set()
        return self.ledger.fits(shape)

    async def cancel_boots_for(self, shape: VMShape) -> bool:
        """Cancel warm boots in flight (other classes first) until ``shape`` fits; False if it never will.

        A leased job comes first: the agent offered capacity that a refill may have taken while the lease was on
        its way (the offer is made before the long-poll, the refill starts during it)."""
        for task, _cls in sorted(self._boots.items(), key=lambda tc: tc[1] == shape.runner_class):
            if self.ledger.fits(shape):
                break
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # its reservation is released when the boot unwinds
        return self.ledger.fits(shape)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """No refill starts inside: room freed for a leased job (an eviction, a cancelled boot) stays free for it
        instead of going to the refill that the freeing itself wakes."""
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            self.changed.set()

    def reconcile(self) -> int:
        """Start boots until ready + booting reaches the desired size (capacity permitting). Returns boots started."""
        started = 0
        self.prune()
        if self.held:
            return 0
        for cls, want in self.desired.items():
            shape = self.shapes[cls]
            while len(self.ready[cls]) + self.booting[cls] < want and self.ledger.reserve(shape):
                self.booting[cls] += 1
                task = asyncio.create_task(self._boot(cls, shape))
                self._tasks.add(task)
                self._boots[task] = cls
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda t: self._boots.pop(t, None))
                started += 1
        return started

    async def _boot(self, cls: str, shape: VMShape) -> None:
        try:
            machine = await self.vmm.boot(shape, f"warm-{cls}-{uuid.uuid4().hex[:8]}")
        except asyncio.CancelledError:
            self.ledger.release(shape)
            raise
        except (SmithError, OSError) as exc:
            self.ledger.release(shape)
            log.warning("warm VM boot failed", runner_class=cls, error=str(exc))
            await asyncio.sleep(1.0)  # do not spin on a broken image
        else:
            self.ready[cls].append(machine)
        finally:
            self.booting[cls] -= 1
            self.changed.set()

    async def run(self, interval: float = 1.0) -> None:
        """The reconcile loop: desired vs actual, on every change and every ``interval`` seconds."""
        while True:
            self.reconcile()
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.changed.wait()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for cls, machine in self.idle():
            await machine.stop()
            self.ledger.release(self.shapes[cls])
        for ms in self.ready.values():
            ms.clear()
