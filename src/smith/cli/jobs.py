"""smith jobs (filled in by the control plane work)."""

import typer

app = typer.Typer(help="jobs", no_args_is_help=True)
