"""smith control (filled in by the control plane work)."""

import typer

app = typer.Typer(help="control", no_args_is_help=True)
