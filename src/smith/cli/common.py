"""Helpers shared by the CLI modules: JSON output, errors, talking to a Smith HTTP API."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from smith.cli.settings import ClientSettings

# A pipe or a file has no width to fit: never cut, fold or ellipsise there (`smith jobs recent | grep ID` works).
console = Console(width=None if sys.stdout.isatty() else 100_000)


def whole(table: Table, column: int, values: Iterable[str]) -> Table:
    """Keep ``column`` of ``table`` (ids) whole on a narrow terminal too: the other columns give way."""
    col = table.columns[column]
    col.no_wrap = True
    col.min_width = max((len(v) for v in values), default=col.min_width or 0)
    return table


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``smith: error: message`` (one line on stderr) and exit with ``code``."""
    from smith.cli.errors import say

    say(message)
    raise typer.Exit(code)


def secret_on_command_line(option: str, setting: str) -> None:
    """One line on stderr when a secret or a token came as a command-line option (the source design's form
    works, but other users see it in ps and it stays in shell history)."""
    typer.echo(
        f"hint: {option} is visible to other users (ps, /proc) and kept in your shell history; "
        f"set {setting} in the environment or an .env file instead",
        err=True,
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def api_client(
    base: str | None, token: str | None, *, url_setting: str, token_setting: str, timeout: float = 30.0
) -> httpx.Client:
    """A client for a Smith HTTP API; ``*_setting`` name what to set when the URL or token is missing."""
    if not base:
        fail(f"no server address: pass --url or set {url_setting}")
    if not token:
        fail(f"no token: pass --token or set {token_setting}")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def check(resp: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; otherwise print the server's error and exit non-zero."""
    if resp.status_code >= 400:
        try:
            body = resp.json()
            msg = body.get("message") or body.get("detail") or resp.text
        except ValueError:
            msg = resp.text
        fail(f"{resp.status_code}: {msg}")
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


def client_settings() -> ClientSettings:
    from smith.cli.settings import ClientSettings

    return ClientSettings()


def _dev_secret(name: str) -> str | None:
    """A secret from the environment, else from the `smith dev` secrets file of this machine's data dir.

    ``name`` is one of dev's SECRET_VARS, each a declared setting of the service that checks it.
    """
    if os.environ.get(name):
        return os.environ[name]
    path = client_settings().data_dir / "dev-secrets.json"
    try:
        value = json.loads(path.read_text()).get(name)
    except (OSError, ValueError):
        return None
    return str(value) if value else None


def local_control_url() -> str | None:
    """SMITH_CONTROL_URL, else the `smith dev` default when its secrets file exists on this machine."""
    settings = client_settings()
    if settings.control_url:
        return settings.control_url
    if _dev_secret("SMITH_JWT_SECRET"):
        return f"http://127.0.0.1:{settings.port}"
    return None


def local_operator_token() -> str | None:
    """SMITH_OPERATOR_TOKEN, else a 10-minute operator token signed with the local SMITH_JWT_SECRET."""
    settings = client_settings()
    if settings.operator_token:
        return settings.operator_token.get_secret_value()
    secret = _dev_secret("SMITH_JWT_SECRET")
    if not secret:
        return None
    from smith import tokens

    return tokens.mint(secret, scope="operator", subject=getpass.getuser(), ttl_seconds=600)


def can_listen(host: str, port: int) -> None:
    """Raise ConfigError, naming the address, when ``host:port`` cannot be listened on (in use, not this machine's):
    said before a server starts, not as uvicorn's exit in the middle of start-up."""
    import socket

    from smith.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def serve_app(app: Any, settings: Any, host: str, port: int, **extra: Any) -> None:
    """Serve an ASGI app (with ``smith.serving``'s connection limits from ``settings``) until cancelled; on
    cancel, shut down gracefully (finish requests, run lifespan exit).

    Signals are left to the caller (``smith dev`` handles SIGINT/SIGTERM once for all its services). ``extra``
    goes to uvicorn's config (the cache's protocol); the event loop is the caller's (uvicorn's ``loop`` setting
    applies only to ``Server.run``).
    """
    import asyncio
    import contextlib

    import uvicorn

    can_listen(host, port)
    from smith import serving

    class _Server(uvicorn.Server):
        def capture_signals(self) -> Any:
            return contextlib.nullcontext()

    server = _Server(serving.config(app, settings, host=host, port=port, timeout_graceful_shutdown=5, **extra))
    task = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        raise
