"""``smith control serve``: run the control plane."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from smith.control.settings import ControlSettings
    from smith.ports import RunnerCredentials

app: typer.Typer = typer.Typer(
    help="The control plane: GitHub webhooks, the job queue, agent and operator APIs.", no_args_is_help=True
)


def build_credentials(settings: ControlSettings) -> RunnerCredentials | None:
    """The GitHub App client when an App is configured, else None (jobs then carry no runner credentials)."""
    from smith.adapters import github

    return github.from_settings(settings)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [env SMITH_HOST, default 127.0.0.1]"),
    port: int = typer.Option(None, help="Port to listen on [env SMITH_PORT, default 8080]"),
    workers: int = typer.Option(1, help="uvicorn worker processes"),
) -> None:
    """Serve the control plane against SMITH_REDIS_URL (run `smith dev` for an embedded Redis)."""
    from smith import serving
    from smith.cli.common import can_listen, fail
    from smith.control.settings import ControlSettings
    from smith.logging import configure

    settings = ControlSettings()
    configure(settings.log_level, json=settings.log_json)
    if not settings.redis_url:
        fail("SMITH_REDIS_URL is not set; use `smith dev` for an embedded Valkey")
    credentials = build_credentials(settings)  # a key that cannot be read stops here, before any warning
    for problem in settings.problems():
        typer.echo(f"warning: {problem}", err=True)
    h, p = host or settings.host, port or settings.port
    can_listen(h, p)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        from smith.metrics import prepare_multiprocess

        prepare_multiprocess(settings.data_dir / "metrics" / f"control-{p}")  # the workers' counters, summed

        config = serving.config("smith.control.asgi:app", settings, host=h, port=p, workers=workers)
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return
    from smith.control.app import create_app

    app_ = create_app(settings, credentials=credentials)
    serving.run(app_, settings, host=h, port=p)
