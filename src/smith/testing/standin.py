"""The stand-in for GitHub's runner (``smith/testing/runner/``: ``run.sh``, ``run-helper.sh`` and a
``bin/Runner.Listener`` that speaks to the fake GitHub's Actions service), installed where a test wants it."""

from __future__ import annotations

import shutil
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "runner"


def install_runner(dest: Path, *, listener: str | None = None, as_if_root: bool = False) -> Path:
    """A copy of the stand-in runner at ``dest`` (world-readable); ``listener`` replaces ``bin/Runner.Listener``
    (e.g. a script that exits at once, for a runner that never starts); ``as_if_root`` makes the helper see uid 0
    wherever it runs (a sandbox's job is never root), so its refusal of root can be played anywhere."""
    shutil.copytree(STANDIN, dest, symlinks=True)
    if listener is not None:
        (dest / "bin" / "Runner.Listener").write_text(listener)
    if as_if_root:
        for helper in ("run-helper.sh", "run-helper.sh.template"):
            text = (dest / helper).read_text()
            (dest / helper).write_text(text.replace("user_id=`id -u`", "user_id=0"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755)
    return dest
