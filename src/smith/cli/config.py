"""``smith config check SERVICE``: validate a service's settings without starting anything."""

from __future__ import annotations

import importlib
from typing import Any

import typer
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from smith.cli.common import console, fail, print_json
from smith.cli.errors import setting_errors

app: typer.Typer = typer.Typer(
    help="Inspect and validate settings (SMITH_* environment variables).", no_args_is_help=True
)

SERVICES = {
    "control": "smith.control.settings:ControlSettings",
    "agent": "smith.agent.settings:AgentSettings",
    "cache": "smith.cache.settings:CacheSettings",
    "logs": "smith.logs.settings:LogsSettings",
}


def settings_class(service: str) -> Any:
    if service not in SERVICES:
        fail(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
    module, _, name = SERVICES[service].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ModuleNotFoundError, AttributeError):
        fail(f"service {service!r} is not available in this build")


def _shown(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value) if value is not None and not isinstance(value, int | float | bool | list) else value


@app.command()
def check(
    service: str = typer.Argument(..., help=f"One of: {', '.join(SERVICES)}"),
    json_out: bool = typer.Option(False, "--json", help="Print settings and problems as JSON"),
    strict: bool = typer.Option(False, help="Exit non-zero on warnings too, not only on invalid values"),
) -> None:
    """Load SERVICE's settings from the environment, report invalid values and missing pieces.

    Exit code 0: valid (warnings may be printed); 1: invalid values; 2: warnings with --strict.
    Secrets are never printed.
    """
    cls = settings_class(service)
    try:
        settings = cls()
    except (ValidationError, SettingsError) as exc:
        errors = setting_errors(exc)
        if json_out:
            print_json(
                {
                    "service": service,
                    "valid": False,
                    "errors": [{k: e[k] for k in ("setting", "error")} for e in errors],
                }
            )
        else:
            for e in errors:
                typer.echo(f"invalid {e['line']}")
        raise typer.Exit(1) from None
    problems: list[str] = settings.problems() if hasattr(settings, "problems") else []
    values = {k: _shown(getattr(settings, k)) for k in type(settings).model_fields}
    if json_out:
        print_json({"service": service, "valid": True, "warnings": problems, "settings": values})
    else:
        console.print(f"[green]valid[/green] settings for {service}")
        for p in problems:
            typer.echo(f"warning {p}")
    if strict and problems:
        raise typer.Exit(2)
