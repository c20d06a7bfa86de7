"""Benchmark the workflow executor's overhead on the sandbox backend, per step and per job, against running the
same commands directly in a shell.

Three measurements, each the median of --rounds runs:
  direct     `bash -e step.sh` with `true` as a plain subprocess, per step (what a step costs anyway)
  boot       sandbox boot + steps-mode config + the first command answered (the "VM start")
  workflow   one job of 1 step and one of --steps steps run by the Executor, end to end

  per step = (job(N) - job(1)) / (N - 1) - direct
  per job  = run(1 step) - boot - direct    (parse-free: the run's own bookkeeping, probe, env, report)

Goals: < 20 ms per step, < 150 ms per job beyond the VM start.

    uv run python bench/executor.py [--steps 40] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from smith.adapters.sandbox import SandboxVMM  # noqa: E402
from smith.agent.backends import sandbox_launcher  # noqa: E402
from smith.domain.vms import VMShape  # noqa: E402
from smith.logging import configure  # noqa: E402
from smith.workflows.context import RunInfo  # noqa: E402
from smith.workflows.executor import Executor  # noqa: E402
from smith.workflows.machines import vm_sessions  # noqa: E402
from smith.workflows.parser import parse  # noqa: E402

SHAPE = VMShape("workflow", 1, 4096)


class Quiet:
    def job_started(self, key: str, name: str) -> None: ...
    def step_started(self, key: str, name: str) -> None: ...
    def line(self, key: str, kind: str, text: str) -> None: ...
    def step_finished(self, key: str, name: str, conclusion: str, seconds: float) -> None: ...
    def job_finished(self, key: str, result: str, seconds: float) -> None: ...


def direct_per_step(n: int, work: Path) -> float:
    script = work / "step.sh"
    script.write_text("true\n")
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(["bash", "-e", str(script)], check=True)
    return (time.perf_counter() - start) / n


async def boot_time(vmm: SandboxVMM) -> float:
    start = time.perf_counter()
    async with vm_sessions(vmm, SHAPE)("boot") as session:
        await session.probe()
        elapsed = time.perf_counter() - start
        await session.end()
    return elapsed


async def run_workflow(vmm: SandboxVMM, steps: int, repo: Path) -> float:
    text = "on: push\njobs:\n  j:\n    runs-on: x\n    steps:\n" + "      - run: 'true'\n" * steps
    wf = parse(text, "bench.yml")
    info = RunInfo(repo, "bench/repo", "push", {}, "0" * 40, "refs/heads/main", "bench", "bench.yml")
    start = time.perf_counter()
    result = await Executor(info, wf, vm_sessions(vmm, SHAPE), Quiet()).run()
    elapsed = time.perf_counter() - start
    assert result.conclusion == "success", result
    return elapsed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    configure("ERROR", json=False)
    launcher, why = sandbox_launcher()
    if launcher is None:
        raise SystemExit(f"no sandbox here: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vmm = SandboxVMM(work / "sbx", launcher=launcher)
        direct = statistics.median(direct_per_step(args.steps, work) for _ in range(args.rounds))
        boot = statistics.median([await boot_time(vmm) for _ in range(args.rounds)])
        one = statistics.median([await run_workflow(vmm, 1, work) for _ in range(args.rounds)])
        many = statistics.median([await run_workflow(vmm, args.steps, work) for _ in range(args.rounds)])
    per_step = (many - one) / (args.steps - 1) - direct
    per_job = one - boot - direct
    return {
        "steps": args.steps,
        "rounds": args.rounds,
        "direct_ms_per_step": round(direct * 1000, 2),
        "boot_ms": round(boot * 1000, 1),
        "job_1_step_ms": round(one * 1000, 1),
        f"job_{args.steps}_steps_ms": round(many * 1000, 1),
        "overhead_ms_per_step": round(per_step * 1000, 2),
        "overhead_ms_per_job": round(per_job * 1000, 1),
        "goal_per_step_ms": 20,
        "goal_per_job_ms": 150,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
