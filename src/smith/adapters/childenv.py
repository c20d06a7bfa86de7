"""The environment of every process the agent starts for a job (sandbox, QEMU, jailer, Firecracker).

Built from nothing, never inherited: the agent's own environment holds its credentials (``SMITH_AGENT_TOKEN``;
under ``smith dev`` also the control plane's JWT, agent-token, cache and webhook secrets), and a VMM's
environment is readable by anything that can read its ``/proc/<pid>/environ``, which inside a bubblewrap
sandbox includes the job itself (its pid 1 is bwrap).
"""

from __future__ import annotations

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def minimal_env(**extra: str) -> dict[str, str]:
    """A fixed PATH and locale, plus ``extra``: nothing of ``os.environ``."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", **extra}
