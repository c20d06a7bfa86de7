"""A job's final state from what its guest said: a script job by its exit code, a runner job by what GitHub's
runner did (``run.sh`` exits 0 for almost anything, a runner that refused to start included)."""

from __future__ import annotations


def judge(exit_code: int, outcome: str | None) -> tuple[str, str]:
    """(state to report, reason). ``outcome`` is the guest's reading of the runner's output, None for a script
    job (or a guest too old to say)."""
    if outcome is None:
        return ("succeeded", "") if exit_code == 0 else ("failed", f"exit code {exit_code}")
    if outcome == "no_job":
        return "released", f"GitHub's runner exited without running a job (exit code {exit_code})"
    if outcome == "succeeded":
        return "succeeded", ""
    if outcome == "cancelled":
        return "cancelled", "GitHub's runner: the job was cancelled"
    return "failed", "GitHub's runner: the job failed"
