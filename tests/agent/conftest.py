"""Fixtures for the host agent: the real control plane (from tests/control) plus an agent wired to it."""

from __future__ import annotations

import shutil

import pytest

from tests.control.conftest import control, control_factory  # noqa: F401  (re-exported fixtures)


@pytest.fixture(params=["bwrap", "unshare"])
def launcher(request: pytest.FixtureRequest) -> str:
    """Each sandbox test runs with both launchers: the isolation must be the same."""
    binary = str(request.param)
    if shutil.which(binary) is None:
        pytest.skip(f"no {binary} binary here")
    return binary
