"""Settings: every SMITH_* name the code uses is a declared setting, every setting is read, fixed sets are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from smith.agent.settings import AgentSettings
from smith.cache.settings import CacheSettings
from smith.cli.settings import ClientSettings
from smith.control.settings import ControlSettings
from smith.logs.settings import LogsSettings
from tests.cli.conftest import run_smith

SRC = Path(__file__).resolve().parents[2] / "src" / "smith"
CLASSES: tuple[type[BaseSettings], ...] = (AgentSettings, CacheSettings, ControlSettings, LogsSettings, ClientSettings)
# SMITH_* names in src/ that are not settings of a Smith service, and why.
NOT_SETTINGS = {
    # the environment a job sees inside its VM or sandbox (set by the guest agent, read by the job's shell)
    "SMITH_JOB_ID": "guest",
    "SMITH_RUNNER_URL": "guest",
    "SMITH_RUNNER_TOKEN": "guest",
    "SMITH_RUNNER_NAME": "guest",
    "SMITH_RUNNER_LABELS": "guest",
    # test harness (smith.testing, never imported by production code)
    "SMITH_FIRECRACKER_SPEC": "testing",
    "SMITH_SHARED_DIR": "testing",
}


def declared() -> set[str]:
    names = set()
    for cls in CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {str(choice) for choice in alias.choices}
            else:
                names.add((prefix + field).upper())
    return names


def test_every_smith_name_in_the_code_is_a_declared_setting() -> None:
    used: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bSMITH_[A-Z0-9_]+", path.read_text()):
            if not name.endswith("_"):  # a prefix in prose: SMITH_AGENT_NETWORK_*
                used.setdefault(name, set()).add(str(path.relative_to(SRC)))
    undeclared = {name: where for name, where in used.items() if name not in declared() | set(NOT_SETTINGS)}
    assert not undeclared, f"read but not declared in any settings class: {undeclared}"


def test_every_setting_is_read_somewhere() -> None:
    text = "\n".join(path.read_text() for path in SRC.rglob("*.py"))
    for cls in CLASSES:
        for field in cls.model_fields:
            if field in ("log_level", "log_json", "data_dir", "redis_url", "debug"):
                continue  # common ones, read by every service's composition root; debug is read raw (cli/errors.py)
            assert re.search(rf"\.{field}\b|[\"']{field}[\"']", text), f"{cls.__name__}.{field} is never read"


@pytest.mark.parametrize(
    ("service", "setting", "value", "said"),
    [
        # a fixed set of values: the error names them all
        ("cache", "SMITH_CACHE_STORAGE", "bogus", ["'filesystem'", "'s3'"]),
        ("agent", "SMITH_AGENT_BACKEND", "bogus", ["'auto'", "'firecracker'", "'qemu'", "'sandbox'"]),
        ("agent", "SMITH_AGENT_KVM", "bogus", ["'auto'", "'on'", "'off'"]),
        ("control", "SMITH_GITHUB_RUNNER_MODE", "bogus", ["'jit'", "'registration'"]),
        ("logs", "SMITH_CLICKHOUSE_DIALECT", "bogus", ["'auto'", "'modern'", "'legacy'"]),
        ("control", "SMITH_LOG_LEVEL", "bogus", ["'DEBUG'", "'INFO'", "'WARNING'", "'ERROR'"]),
        # port numbers
        ("control", "SMITH_PORT", "99999", ["65535"]),
        ("cache", "SMITH_CACHE_PORT", "0", ["1"]),
        ("logs", "SMITH_LOGS_PORT", "-1", ["1"]),
        ("agent", "SMITH_AGENT_NETWORK_HOST_PORTS", "8080,70000", ["65535"]),
    ],
)
def test_config_check_names_the_setting_and_what_it_takes(
    service: str, setting: str, value: str, said: list[str]
) -> None:
    result = run_smith("config", "check", service, env={setting: value})
    assert result.code == 1, result.out
    line = next(line for line in result.out.splitlines() if setting in line)
    assert line.startswith(f"invalid {setting}=")
    for word in said:
        assert word in line


def test_log_level_is_case_insensitive() -> None:
    assert run_smith("config", "check", "cache", env={"SMITH_LOG_LEVEL": "debug"}).code == 0


def test_config_check_warns_of_an_unreadable_app_key() -> None:
    env = {"SMITH_GITHUB_APP_ID": "1", "SMITH_GITHUB_APP_PRIVATE_KEY_PATH": "/nonexistent/key.pem"}
    result = run_smith("config", "check", "control", env=env)
    assert result.code == 0 and "SMITH_GITHUB_APP_PRIVATE_KEY_PATH=/nonexistent/key.pem: cannot read" in result.out
