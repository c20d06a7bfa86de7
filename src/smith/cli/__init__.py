"""The ``smith`` command. Each service adds its own sub-app from its own module in this package."""

from __future__ import annotations

import typer

from smith.cli import auth, config, control, dev, jobs

app = typer.Typer(
    name="smith",
    help="Smith runs GitHub Actions jobs in fresh microVMs on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(control.app, name="control")
app.add_typer(jobs.app, name="jobs")
app.add_typer(auth.app, name="auth")
app.add_typer(config.app, name="config")
app.command("dev")(dev.dev)

# Services of later issues register here: agent, cache, logs.
for _name in ("agent", "cache", "logs", "image"):
    try:
        _mod = __import__(f"smith.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError:
        continue
    _mod.register(app)


def main() -> None:
    app()
