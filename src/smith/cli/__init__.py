"""The ``smith`` command line (built in ``smith.cli.root``).

This package imports none of its modules itself, so ``python -m smith.cli.jobs`` (and the other module forms) run
that module once, as ``__main__``, without a copy imported before it.
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    from smith.cli.root import main as run_root

    run_root()


def __getattr__(name: str) -> Any:
    if name == "app":
        from smith.cli.root import app

        return app
    raise AttributeError(name)
