"""The ``smith`` command. Each service adds its own sub-app from its own module in this package.

``run(app)`` runs any of them with the same error handling: ``smith`` itself, and each module run as
``python -m smith.cli.<module>`` (the forms of our source design), one implementation behind both.
"""

from __future__ import annotations

import os
import sys

import typer

from smith.cli import auth, config, control, dev, jobs

app = typer.Typer(
    name="smith",
    help=(
        "Smith runs GitHub Actions jobs in fresh microVMs on your own machines.\n\n"
        "Start with `smith dev` (every service on this machine, no set-up), then `smith jobs submit 'echo hi'`. "
        "Settings are SMITH_* environment variables: `smith config check SERVICE` validates them. "
        "A failed command prints one line, `smith: error: ...`, and exits non-zero (--debug: the traceback)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails [env SMITH_DEBUG]"),
) -> None:
    if debug:
        os.environ["SMITH_DEBUG"] = "1"


app.add_typer(control.app, name="control")
app.add_typer(jobs.app, name="jobs")
app.add_typer(auth.app, name="auth")
app.add_typer(config.app, name="config")
app.command("dev")(dev.dev)

# Services of later issues register here: agent, cache, logs.
for _name in ("agent", "cache", "logs", "image", "report", "run", "rootfs", "assets"):
    try:
        _mod = __import__(f"smith.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError:
        continue
    _mod.register(app)


def main() -> None:
    """Run the command line; any failure ends as one ``smith: error: ...`` line and a non-zero exit."""
    run(app)


def run(cli: typer.Typer, prog: str | None = None) -> None:
    """Run ``cli`` (the root app or a module's); any failure ends as one ``smith: error: ...`` line."""
    from smith.cli import errors

    try:
        code = cli(standalone_mode=False, prog_name=prog)
    except Exception as exc:  # every command's failures end here
        if errors.debug_requested():
            raise
        message, code = errors.explain(exc)
        errors.say(message)
    except KeyboardInterrupt:
        message, code = errors.explain(KeyboardInterrupt())
        errors.say(message)
    sys.exit(code if isinstance(code, int) else 0)
