"""Scopes with the real ``@actions/cache`` clients (3.x legacy REST and the latest v2), on both stores.

Each step runs the real client with one job's token: main saves, a feature branch and a pull request read main's
entry (the default branch and the base ref are readable) but their saves stay in their own scope, so main keeps
restoring what it saved; another repository and another org miss. Keys are GitHub's: ``Linux-refs/heads/main``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cache.conftest import token
from tests.cache.test_conformance import CLIENTS, NPM, _client_dir

KEY = "Linux-refs/heads/main-deps"
MAIN = token(ref="refs/heads/main", default_ref="refs/heads/main")
FEATURE = token(ref="refs/heads/feature", default_ref="refs/heads/main")
PR = token(ref="refs/pull/7/merge", base_ref="refs/heads/main", default_ref="refs/heads/main")
OTHER_REPO = token(repo="api", ref="refs/heads/main", default_ref="refs/heads/main")
OTHER_ORG = token(org="evil", ref="refs/heads/main", default_ref="refs/heads/main")


class Step:
    def __init__(self, name: str, url: str, tmp_path: Path) -> None:
        self.dir = _client_dir(name)
        self.name, self.url, self.tmp = name, url, tmp_path
        self.path = str(tmp_path / "work" / "deps")  # one path: the entry's version hashes it

    def __call__(self, tok: str, *args: str) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_"))}
        env |= {"ACTIONS_RUNTIME_TOKEN": tok, "RUNNER_TEMP": str(self.tmp)}
        if self.name == "v3":
            env["ACTIONS_CACHE_URL"] = self.url + "/"
        else:
            env |= {"ACTIONS_RESULTS_URL": self.url + "/", "ACTIONS_CACHE_SERVICE_V2": "true"}
        action, rest = args[0], args[1:]
        proc = subprocess.run(
            ["node", str(NPM / "step.mjs"), str(self.dir), action, self.path, *rest],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0 and lines, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        out: dict[str, Any] = json.loads(lines[-1])
        assert "error" not in out, out
        return out

    def save(self, tok: str, key: str, content: str) -> int:
        return int(self(tok, "save", key, content)["id"])

    def restore(self, tok: str, key: str, *restore_keys: str) -> tuple[str | None, str | None]:
        out = self(tok, "restore", key, *restore_keys)
        return out["hit"], out["content"]


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_clients_keep_branch_scopes(name: str, serve: Any, store: Any, tmp_path: Path) -> None:
    step = Step(name, serve(store).url, tmp_path)
    assert step.save(MAIN, KEY, "main's deps") > 0
    assert step.restore(MAIN, KEY) == (KEY, "main's deps")
    # A feature branch and a pull request read the default branch / their base.
    assert step.restore(FEATURE, KEY) == (KEY, "main's deps")
    assert step.restore(PR, "Linux-refs/heads/other", "Linux-refs/") == (KEY, "main's deps")
    # The poisoning attempt: the pull request saves the same key; it lands in the PR's own scope.
    assert step.save(PR, KEY, "EVIL") > 0
    assert step.restore(PR, KEY) == (KEY, "EVIL")
    assert step.restore(MAIN, KEY) == (KEY, "main's deps")
    assert step.restore(FEATURE, KEY) == (KEY, "main's deps")
    # Another repository of the org, and another org, see nothing.
    assert step.restore(OTHER_REPO, KEY) == (None, None)
    assert step.restore(OTHER_ORG, KEY, "Linux-") == (None, None)
    # Main's key is final: a second save from main is refused, the bytes stay.
    assert step.save(MAIN, KEY, "again") == -1
    assert step.restore(MAIN, KEY) == (KEY, "main's deps")
