"""Secrets planted in the agent's environment, and a job that hunts for them in everything it can read."""

from __future__ import annotations

import secrets

import pytest

from smith.wire.guest import GuestEvent

NAMES = (
    "SMITH_JWT_SECRET",
    "SMITH_AGENT_TOKEN_SECRET",
    "SMITH_CACHE_SHARED_SECRET",
    "SMITH_GITHUB_WEBHOOK_SECRET",
    "SMITH_GITHUB_APP_PRIVATE_KEY",
    "SMITH_AGENT_TOKEN",
    "SMITH_CLICKHOUSE_PASSWORD",
)
MARK = "planted"  # every value starts with it; the hunt greps for it without ever spelling it whole

# The job: its own environment, every process environment and command line it can read, the kernel command
# line, and every readable file under the places a secret could have been left. The grep pattern is built at
# run time, so the script (itself a file in /work) does not match itself.
HUNT = r"""
echo BEGIN-HUNT
env
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\0' '\n' < "$f" 2>/dev/null; done
cat /proc/cmdline 2>/dev/null
p=plant; p="${p}ed-"
for d in /work /tmp /run /etc /smith-guest /smith /runner /dev/shm; do
    [ -d "$d" ] && grep -r -a -h -F "$p" "$d" 2>/dev/null | head -c 200000
done
echo END-HUNT
"""

# Where the "guest" is not isolated from this machine (the fake Firecracker runs it as a host process), only the
# job's own environment is the guest's view.
ENV_ONLY = "echo BEGIN-HUNT; env; echo END-HUNT"


def plant(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake secrets in this process's environment (as the agent's, or `smith dev`'s, would be)."""
    values = {name: f"{MARK}-{name.lower()}-{secrets.token_hex(8)}" for name in NAMES}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def found(values: dict[str, str], text: str) -> list[str]:
    return [name for name, value in values.items() if value in text]


def job_output(events: list[GuestEvent]) -> str:
    """Every line the job and the guest produced; asserts the hunt ran to its end."""
    text = "\n".join(e.line for e in events if e.type == "line")
    assert "BEGIN-HUNT" in text and "END-HUNT" in text, text[-2000:]
    assert "SMITH_JOB_ID=" in text  # `env` ran: its output is in here
    return text
