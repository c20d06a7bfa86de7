"""``smith dev``: every service on one machine with embedded defaults."""


def dev() -> None:
    """Run Smith on this machine with embedded defaults (no setup)."""
