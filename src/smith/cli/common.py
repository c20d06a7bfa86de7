"""Helpers shared by the CLI modules: JSON output, errors, talking to a Smith HTTP API."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from smith.errors import SmithError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def api_client(
    url: str | None, token: str | None, *, env_url: str, env_token: str, timeout: float = 30.0
) -> httpx.Client:
    base = url or os.environ.get(env_url)
    tok = token or os.environ.get(env_token)
    if not base:
        fail(f"no server address: pass --url or set {env_url}")
    if not tok:
        fail(f"no token: pass --token or set {env_token}")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tok}"}, timeout=timeout)


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


def run_or_fail(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SmithError as exc:
        fail(exc.message)
    except httpx.HTTPError as exc:
        fail(f"cannot reach server: {exc}")


def _dev_secret(name: str) -> str | None:
    """A secret from the environment, else from the `smith dev` secrets file of this machine's data dir."""
    if os.environ.get(name):
        return os.environ[name]
    from smith.settings import CommonSettings

    path = CommonSettings().data_dir / "dev-secrets.json"
    try:
        value = json.loads(path.read_text()).get(name)
    except (OSError, ValueError):
        return None
    return str(value) if value else None


def local_control_url() -> str | None:
    """SMITH_CONTROL_URL, else the `smith dev` default when its secrets file exists on this machine."""
    if os.environ.get("SMITH_CONTROL_URL"):
        return os.environ["SMITH_CONTROL_URL"]
    if _dev_secret("SMITH_JWT_SECRET"):
        return f"http://127.0.0.1:{os.environ.get('SMITH_PORT', '8080')}"
    return None


def local_operator_token() -> str | None:
    """SMITH_OPERATOR_TOKEN, else a 10-minute operator token signed with the local SMITH_JWT_SECRET."""
    if os.environ.get("SMITH_OPERATOR_TOKEN"):
        return os.environ["SMITH_OPERATOR_TOKEN"]
    secret = _dev_secret("SMITH_JWT_SECRET")
    if not secret:
        return None
    from smith import tokens

    return tokens.mint(secret, scope="operator", subject=os.environ.get("USER", "operator"), ttl_seconds=600)


async def serve_app(app: Any, settings: Any, host: str, port: int) -> None:
    """Serve an ASGI app (with ``smith.serving``'s connection limits from ``settings``) until cancelled; on
    cancel, shut down gracefully (finish requests, run lifespan exit).

    Signals are left to the caller (``smith dev`` handles SIGINT/SIGTERM once for all its services).
    """
    import asyncio
    import contextlib

    import uvicorn

    from smith import serving

    class _Server(uvicorn.Server):
        def capture_signals(self) -> Any:
            return contextlib.nullcontext()

    server = _Server(serving.config(app, settings, host=host, port=port, timeout_graceful_shutdown=5))
    task = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        raise
