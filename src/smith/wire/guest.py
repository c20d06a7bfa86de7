"""What the host agent hands to the guest agent inside a VM, and what the guest sends back.

The config reaches the guest over MMDS (Firecracker) or the backend's equivalent; it never goes on the kernel
command line. Guest events are JSON lines, one object each, over the backend's channel (serial port, vsock,
a pipe for the sandbox).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from smith.wire.agent import JobSpec, RunnerCredential, ServiceAccess


class GuestConfig(BaseModel):
    job: JobSpec
    runner: RunnerCredential | None = None
    cache: ServiceAccess | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the job")
    runner_dir: str = Field("/opt/actions-runner", description="Where GitHub's runner lives in the image")
    steps: bool = Field(False, description="Steps mode: the host sends one command per line after the config")
    runner_user: str = Field("runner", description="The unprivileged user a root guest runs GitHub's runner as")
    runner_idle_seconds: float = Field(900.0, gt=0, description="Stop GitHub's runner if it gets no job this long")


class GuestEvent(BaseModel):
    """One line of output, the end of a steps-mode command (``step``), or the end of the job. ``ts`` is
    seconds since the epoch, taken in the guest."""

    type: Literal["started", "line", "exit", "step"]
    ts: float
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    line: str = ""
    seq: int = 0
    exit_code: int | None = None
    files: dict[str, str] | None = None  # a steps-mode command's collected files
    # On the exit event of a runner job: what GitHub's runner did, read from its output ("no_job": it ran none).
    outcome: Literal["succeeded", "failed", "cancelled", "no_job"] | None = None
