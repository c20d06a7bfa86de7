"""Fakes and harnesses for tests: things that cannot run here for real (GitHub's API, Firecracker).

Production code never imports this package (an import-linter contract in pyproject.toml holds that line).
"""
