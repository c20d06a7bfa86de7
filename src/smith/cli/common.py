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
