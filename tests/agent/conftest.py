"""Fixtures for the host agent: the real control plane (from tests/control) plus an agent wired to it."""

from __future__ import annotations

from tests.control.conftest import control, control_factory  # noqa: F401  (re-exported fixtures)
