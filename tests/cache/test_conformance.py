"""The real ``@actions/cache`` client (3.x: legacy REST; latest major: v2 Twirp + Azure SDK) against our server.

tests/cache/npm/conformance.mjs saves a directory, restores it and compares bytes, then checks a restore-key
hit, a miss, a version mismatch and a refused second save. CI runs ``npm ci`` in tests/cache/npm/v3 and v6;
here the test runs it itself when node_modules is missing and the registry answers, and skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smith.adapters.filesystem import FilesystemBlobStore
from tests.cache.conftest import token

NPM = Path(__file__).parent / "npm"
CLIENTS = {"v3": "legacy REST (ACTIONS_CACHE_URL)", "v6": "v2 Twirp (ACTIONS_RESULTS_URL)"}


def _client_dir(name: str) -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node/npm not installed (CI installs nodejs + npm)")
    d = NPM / name
    if not (d / "node_modules" / "@actions" / "cache").exists():
        try:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"], cwd=d, check=True, capture_output=True, timeout=180
            )
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"@actions/cache not installed in {d} and `npm ci` failed: {exc}")
    return d


def run_client(
    name: str, url: str, tmp_path: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    d = _client_dir(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_"))}
    env |= {
        "ACTIONS_RUNTIME_TOKEN": token(ref="refs/heads/feature", default_ref="refs/heads/main"),
        "RUNNER_TEMP": str(tmp_path),
    }
    if name == "v3":
        env["ACTIONS_CACHE_URL"] = url + "/"
    else:
        env |= {"ACTIONS_RESULTS_URL": url + "/", "ACTIONS_CACHE_SERVICE_V2": "true"}
    env |= env_extra or {}
    proc = subprocess.run(
        ["node", str(NPM / "conformance.mjs"), str(d), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    checks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"check"')]
    failed = [c for c in checks if not c["ok"]]
    assert proc.returncode == 0 and not failed and checks, f"{failed}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    return checks


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_client_round_trip(name: str, serve: Any, store: Any, tmp_path: Path) -> None:
    srv = serve(store)
    checks = run_client(name, srv.url, tmp_path)
    names = {c["check"] for c in checks}
    assert {"small: restored bytes match", "restore-key prefix hit", "miss returns undefined"} <= names
    assert "version mismatch (other paths) is a miss" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_client_large_entry(name: str, serve: Any, store: Any, tmp_path: Path) -> None:
    """150 MB: 3.x sends concurrent 8 MiB PATCH chunks; the latest major stages 64 MiB blocks + a block list."""
    srv = serve(store, cache_max_entry_bytes=1024**3)
    checks = run_client(name, srv.url, tmp_path, "--big")
    assert any(c["check"] == "big: restored bytes match" and c["ok"] for c in checks)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_client_restores_from_the_placeholder_download_host(name: str, serve: Any, tmp_path: Path) -> None:
    """With a download host ending in .blob.core.windows.net the clients download in parallel (v6 through the
    Azure SDK: x-ms-range, ETag) and the bytes still match."""
    host = "smith-cache.blob.core.windows.net"
    srv = serve(FilesystemBlobStore(tmp_path / "fs"), cache_download_host=host)
    checks = run_client(name, srv.url, tmp_path, env_extra={"LOOPBACK_HOST": host})
    assert "small: restored bytes match" in {c["check"] for c in checks}
