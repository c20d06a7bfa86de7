"""Time limits that stretch with the machine's load.

A guest under software emulation (QEMU TCG) is CPU-bound: on a quiet 2-core machine its kernel prints within a
second or two, with eight busy processes beside it four times slower. A fixed wall-clock limit that is safe when
quiet fails under load. A ``Budget`` is counted in seconds of a quiet machine instead: each real second spends
``1 / slowness()`` of it, where ``slowness()`` is how many runnable tasks share each CPU (the 1-minute load
average, plus the task being timed, over the CPUs this process may use), and never less than 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field


def slowness(
    loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    cpus: Callable[[], int] = lambda: len(os.sched_getaffinity(0)),
) -> float:
    """How much slower than an idle machine a CPU-bound task runs now: 1.0 when there is a CPU to spare."""
    try:
        load = loadavg()[0]
    except OSError:  # no load average here: assume an idle machine
        return 1.0
    return max(1.0, (load + 1.0) / max(1, cpus()))


@dataclass
class Budget:
    """``seconds`` of an idle machine's time, spent more slowly while the machine is loaded."""

    seconds: float
    measure: Callable[[], float] = slowness
    spent: float = field(default=0.0, init=False)

    def spend(self, wall_seconds: float) -> None:
        self.spent += wall_seconds / self.measure()

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.seconds
