"""``uvicorn smith.control.asgi:app``: the control plane built from the environment (multi-worker entry)."""

from __future__ import annotations

from smith.adapters import github
from smith.control.app import create_app
from smith.control.settings import ControlSettings
from smith.logging import configure


def _build() -> object:
    settings = ControlSettings()
    configure(settings.log_level, json=settings.log_json)
    return create_app(settings, credentials=github.from_settings(settings))


app = _build()
