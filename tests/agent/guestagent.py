"""The guest agent as the tests see it: its file (it runs in the guest as a plain script, not from the package)
and a fresh copy of it loaded as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

AGENT = Path(__file__).resolve().parents[2] / "src" / "smith" / "guest" / "agent.py"


def load_agent() -> ModuleType:
    """A fresh module from ``AGENT`` (not in ``sys.modules``: each call gets its own)."""
    spec = importlib.util.spec_from_file_location("smith_guest_agent", AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
