"""Typed workflow models. Values that may hold expressions stay as written; the runner evaluates them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Trigger:
    """One event of ``on``, with its filters (None: the filter is absent)."""

    event: str
    branches: list[str] | None = None
    branches_ignore: list[str] | None = None
    tags: list[str] | None = None
    tags_ignore: list[str] | None = None
    paths: list[str] | None = None
    paths_ignore: list[str] | None = None
    types: list[str] | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    index: int
    line: int
    id: str | None = None
    name: str | None = None
    if_: Any = None
    run: str | None = None
    uses: str | None = None
    with_: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    shell: str | None = None
    working_directory: str | None = None
    continue_on_error: Any = False
    timeout_minutes: Any = None

    @property
    def display(self) -> str:
        if self.name:
            return self.name
        if self.uses:
            return f"Run {self.uses}"
        first = (self.run or "").strip().splitlines()
        return f"Run {first[0]}" if first else f"step {self.index + 1}"


@dataclass(frozen=True)
class Strategy:
    matrix: Any = None  # a mapping, or an expression string (fromJSON(...))
    fail_fast: Any = True
    max_parallel: Any = None


@dataclass(frozen=True)
class Job:
    id: str
    line: int
    name: str | None = None
    needs: list[str] = field(default_factory=list)
    if_: Any = None
    runs_on: Any = None
    strategy: Strategy | None = None
    timeout_minutes: Any = 360
    continue_on_error: Any = False
    env: dict[str, Any] = field(default_factory=dict)
    defaults_run: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    concurrency: Any = None  # a group per job instance, on the platform (control/wfconcurrency.py)
    # Why Smith cannot run this job (a reusable workflow, `services`, `container`): the job fails with it when its
    # `if` lets it run, and the workflow's other jobs run as on GitHub.
    unsupported: str | None = None


@dataclass(frozen=True)
class Workflow:
    file: str
    name: str
    on: dict[str, Trigger]
    jobs: dict[str, Job]
    env: dict[str, Any] = field(default_factory=dict)
    defaults_run: dict[str, Any] = field(default_factory=dict)
    concurrency: Any = None
    permissions: Any = None
    run_name: str | None = None

    def stages(self) -> list[list[str]]:
        """Jobs in ``needs`` order: each stage holds jobs whose needs are all in earlier stages."""
        done: set[str] = set()
        out: list[list[str]] = []
        left = list(self.jobs)
        while left:
            stage = [j for j in left if all(n in done for n in self.jobs[j].needs)]
            out.append(stage)
            done.update(stage)
            left = [j for j in left if j not in done]
        return out
