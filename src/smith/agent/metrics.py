"""The host agent's metrics, served on its own port (``SMITH_AGENT_METRICS_PORT``; off when unset).

Boot and restore times are histograms kept by ``Metered``, the VM backend wrapped by the agent; VMs per state,
busy and idle runners, free capacity and the log spool's size are read from the agent at scrape time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from prometheus_client import Histogram

from smith import tracing
from smith.domain.vms import VMShape
from smith.metrics import FAST_BUCKETS, WAIT_BUCKETS, Family, add_metrics_route
from smith.ports import VMM, Machine

BOOT = Histogram(
    "smith_vm_boot_seconds", "Cold VM boots until ready for a job", ["backend", "runner_class"], buckets=WAIT_BUCKETS
)
RESTORE = Histogram(
    "smith_vm_restore_seconds",
    "VMs restored from a snapshot until ready for a job",
    ["backend", "runner_class"],
    buckets=FAST_BUCKETS,
)
BOOT_FAILURES = Histogram(
    "smith_vm_boot_failed_seconds", "Boots that failed or were cancelled", ["backend"], buckets=WAIT_BUCKETS
)


def _restores(vmm: Any, shape: VMShape) -> bool:
    """Whether ``vmm.boot`` will restore this shape from a snapshot (the QEMU backend keeps them by size)."""
    snapshots = getattr(vmm, "snapshots", None)
    return isinstance(snapshots, dict) and (shape.vcpus, shape.memory_mib) in snapshots and not vmm.network


class Metered:
    """A VM backend that times its boots and counts those in flight; everything else passes through."""

    def __init__(self, vmm: VMM) -> None:
        self.inner = vmm
        self.booting: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def boot(self, shape: VMShape, vm_id: str, **how: Any) -> Machine:
        """The inner backend's boot, timed; ``how`` (e.g. a job's sticky disks) passes through."""
        backend = str(self.inner.backend)
        restore = _restores(self.inner, shape)
        self.booting[shape.runner_class] += 1
        started = time.monotonic()
        try:
            with tracing.span("vm boot", child_only=True, backend=backend, runner_class=shape.runner_class):
                machine = await self.inner.boot(shape, vm_id, **how)
        except BaseException:
            BOOT_FAILURES.labels(backend=backend).observe(time.monotonic() - started)
            raise
        finally:
            self.booting[shape.runner_class] -= 1
        (RESTORE if restore else BOOT).labels(backend=backend, runner_class=shape.runner_class).observe(
            time.monotonic() - started
        )
        return machine

    async def cleanup_leftovers(self) -> list[str]:
        return await self.inner.cleanup_leftovers()


def metered(vmm: VMM) -> Any:
    return vmm if isinstance(vmm, Metered) else Metered(vmm)


def _spool_bytes(output: Any) -> int:
    own = getattr(output, "spool_bytes", None)
    return int(own) if isinstance(own, int) else sum(_spool_bytes(o) for o in getattr(output, "outputs", ()))


def families(agent: Any) -> Iterable[Family]:
    """Scrape-time gauges from a running ``Agent``."""
    backend = str(agent.vmm.backend)
    vms = Family("smith_vms", "VMs on this host by state", ("backend", "runner_class", "state"))
    running = Counter(j.shape.runner_class for j in list(agent.jobs.values()))
    warm: Counter[str] = Counter()
    if agent.pool is not None:
        warm.update({cls: len(ms) for cls, ms in agent.pool.ready.items()})
    booting = getattr(agent.vmm, "booting", Counter())
    for state, counts in (("running", running), ("warm", warm), ("booting", booting)):
        for cls, n in counts.items():
            vms.samples[(backend, cls, state)] = float(n)
    yield vms
    yield Family("gha_busy_runners", "VMs running a job", (), {(): float(sum(running.values()))})
    yield Family("gha_idle_runners", "Warm VMs waiting for a job", (), {(): float(sum(warm.values()))})
    ledger = agent.ledger
    yield Family("smith_agent_free_vcpus", "vCPUs not reserved by a VM", (), {(): float(ledger.free_vcpus)})
    yield Family("smith_agent_free_vms", "VM slots not reserved", (), {(): float(ledger.free_vms)})
    yield Family(
        "smith_agent_spool_bytes",
        "Job output spooled on disk, not yet acknowledged by the log pipeline",
        (),
        {(): float(_spool_bytes(agent.output))},
    )


def app(agent: Any, token: Any) -> Any:
    """A tiny ASGI app with ``/metrics`` (and ``/healthz``) for the agent's own port."""
    from fastapi import FastAPI

    from smith.http import add_error_handlers

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(api)

    async def snapshot() -> Iterable[Family]:
        return list(families(agent))

    add_metrics_route(api, token, snapshot)
    return api


async def serve(agent: Any, settings: Any) -> None:
    """Serve the agent's /metrics until cancelled (``SMITH_AGENT_METRICS_PORT`` must be set)."""
    import contextlib

    import uvicorn

    from smith import serving

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:  # the agent's own SIGTERM handler drains it; leave signals alone
            return contextlib.nullcontext()

    config = serving.config(
        app(agent, settings.metrics_token),
        settings,
        host=settings.agent_metrics_host,
        port=settings.agent_metrics_port,
        lifespan="off",
    )
    await Server(config).serve()
