"""Smith: GitHub Actions jobs in fresh microVMs on your own machines."""

__version__ = "0.1.0"
