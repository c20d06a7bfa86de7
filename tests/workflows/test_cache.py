"""actions/cache in `smith run` against a real Smith cache server (its v2 Twirp protocol), on the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smith.testing.servers import ThreadedServer
from tests.cache.conftest import serve, settings, token  # noqa: F401 - fixtures
from tests.workflows.conftest import BWRAP, smith_run

pytestmark = BWRAP

WORKFLOW = """
on: push
jobs:
  fill:
    runs-on: x
    steps:
      - id: c
        uses: actions/cache@v4
        with:
          path: ~/.cache/thing
          key: thing-${{ hashFiles('deps.txt') }}
      - run: echo "first hit=${{ steps.c.outputs.cache-hit }}"
      - run: mkdir -p ~/.cache/thing && echo "built once" > ~/.cache/thing/out.txt
  use:
    needs: fill
    runs-on: x
    steps:
      - id: c
        uses: actions/cache/restore@v4
        with:
          path: ~/.cache/thing
          key: thing-other
          restore-keys: |
            thing-
      - run: echo "second hit=${{ steps.c.outputs.cache-hit }} matched=${{ steps.c.outputs.cache-matched-key }}"
      - run: cat ~/.cache/thing/out.txt
"""


def test_actions_cache_saves_and_restores_through_the_cache_server(
    tmp_path: Path,
    serve: Callable[..., ThreadedServer],  # noqa: F811
) -> None:
    srv = serve()
    (tmp_path / "deps.txt").write_text("a==1\n")
    wf = tmp_path / "cache.yml"
    wf.write_text(WORKFLOW)
    args = ["--workflow", str(wf), "--cache-url", srv.url, "--cache-token", token()]
    ran = smith_run(str(tmp_path), *args, network=True)
    assert ran.code == 0, ran.log
    log = ran.log
    assert "first hit=false" in log and "Cache saved with key: thing-" in log
    assert "second hit=false matched=thing-" in log  # a restore-key hit is not an exact hit
    assert "]     built once" in log
