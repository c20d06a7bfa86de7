"""Every command explains itself, and every command that prints something to read can print it as JSON."""

from __future__ import annotations

import json
from typing import Any

from typer.main import get_command

from smith.cli import app
from tests.cli.conftest import run_smith

# Commands that run a service (they print a banner and logs, nothing to parse).
SERVERS = {"smith dev", "smith control serve", "smith agent run", "smith cache serve", "smith logs serve"}


def commands(cmd: Any = None, path: str = "smith") -> dict[str, Any]:
    cmd = cmd or get_command(app)
    sub = getattr(cmd, "commands", None) or {}
    found = {path: cmd} if not sub or getattr(cmd, "invoke_without_command", False) else {}
    for name, child in sub.items():
        found |= commands(child, f"{path} {name}")
    return found


def test_every_command_option_and_argument_has_help() -> None:
    missing = []
    for path, cmd in commands().items():
        if not (cmd.help or "").strip():
            missing.append(path)
        for param in cmd.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.name}")
    assert not missing


def test_every_command_that_is_not_a_server_has_json() -> None:
    without = [
        path
        for path, cmd in commands().items()
        if path not in SERVERS and not any("--json" in getattr(p, "opts", []) for p in cmd.params)
    ]
    assert not without


def test_cache_token_as_json() -> None:
    result = run_smith("cache", "token", "--org-id", "acme", "--json", env={"SMITH_CACHE_SHARED_SECRET": "s" * 32})
    assert result.code == 0, result.err
    body = json.loads(result.out)
    assert body["scope"] == "cache" and body["org"] == "acme" and body["expires_in"] == 6 * 3600 and body["token"]
