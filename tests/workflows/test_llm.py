"""The optional LLM fallback against a fake Ollama endpoint: off by default, proposal shown, run only if enabled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smith.testing.ollama import create_app
from smith.testing.servers import ThreadedServer
from tests.workflows.conftest import BWRAP
from tests.workflows.test_corpus import run_text

pytestmark = BWRAP

ANSWER = 'Here you go:\n```bash\necho "setting up thing $THING_VERSION"\necho proposed-and-ran\n```\n'
STEPS = (
    "    steps:\n      - name: Setup thing\n        uses: someone/setup-thing@v1\n"
    "        with:\n          version: '2.1'\n          token: ${{ secrets.TOKEN }}\n"
    "        env:\n          THING_VERSION: '2.1'\n"
)


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    app, seen = create_app({"tiny": ANSWER})
    with ThreadedServer(app) as srv:
        monkeypatch.setenv("SMITH_LLM_URL", srv.url)
        monkeypatch.setenv("SMITH_LLM_MODEL", "tiny")
        yield seen


def test_off_by_default_the_step_is_an_early_error(tmp_path: Path) -> None:
    ran = run_text(tmp_path, STEPS)
    assert ran.code == 1 and "remote action someone/setup-thing@v1 is not available" in ran.log
    assert "LLM" not in ran.log


def test_proposal_shown_but_not_run_unless_enabled(tmp_path: Path, ollama: list[dict[str, Any]]) -> None:
    ran = run_text(tmp_path, STEPS, "--secret", "TOKEN=very-secret-token")
    assert ran.code == 1
    assert "LLM proposal (tiny) for someone/setup-thing@v1" in ran.log
    assert 'echo "setting up thing $THING_VERSION"' in ran.log
    assert "]     proposed-and-ran" not in ran.log and "SMITH_LLM_ENABLED is off" in ran.log
    prompt = ollama[0]["prompt"]
    assert ollama[0]["model"] == "tiny" and ollama[0]["stream"] is False
    assert "version: 2.1" in prompt and "very-secret-token" not in prompt and "token: ***" in prompt


def test_enabled_runs_the_proposal(
    tmp_path: Path, ollama: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMITH_LLM_ENABLED", "true")
    ran = run_text(tmp_path, STEPS)
    assert ran.code == 0, ran.log
    assert "setting up thing 2.1" in ran.log and "proposed-and-ran" in ran.log


def test_unknown_model_is_a_clear_error(
    tmp_path: Path, ollama: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMITH_LLM_MODEL", "nope")
    ran = run_text(tmp_path, STEPS)
    assert ran.code == 1 and "answered 404: model 'nope' not found" in ran.log
