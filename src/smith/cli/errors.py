"""What every ``smith`` command prints when it fails: one line on stderr, ``smith: error: ...``, never a traceback.

``explain`` turns an exception into that line and an exit code; ``main()`` in this package applies it to every
command. ``SMITH_DEBUG=1`` (or ``smith --debug ...``) lets the traceback through instead.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import httpx
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from smith.errors import SmithError

USAGE = 2  # click's exit code for a command line it cannot parse
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def say(message: str) -> None:
    """Print ``smith: error: message`` on stderr as one line, whatever the message holds (nothing if empty)."""
    if not message:
        return
    sys.stderr.write(f"smith: error: {one_line(message)}\n")
    sys.stderr.flush()


def one_line(text: str) -> str:
    return " ".join(text.split())


def debug_requested() -> bool:
    """SMITH_DEBUG (declared in ClientSettings), read raw: the handler must work when other settings are invalid."""
    return os.environ.get("SMITH_DEBUG", "").lower() in ("1", "true", "yes", "on")


def setting_name(loc: tuple[Any, ...]) -> str:
    """The environment variable a settings validation error is about: ``("agent_vcpus",)`` -> SMITH_AGENT_VCPUS."""
    first = str(loc[0]) if loc else ""
    return first.upper() if first.upper().startswith("SMITH_") else "SMITH_" + first.upper()


def setting_errors(exc: ValidationError | SettingsError) -> list[dict[str, str]]:
    """Per invalid value: the setting, the error, and a line naming both (the value too, unless a secret)."""
    if isinstance(exc, SettingsError):  # a JSON-typed setting that is not JSON: pydantic-settings fails before pydantic
        field = re.search(r'field "([^"]+)"', str(exc))
        name = setting_name((field.group(1),)) if field else "a setting"
        message = f"not valid JSON ({exc.__cause__})" if exc.__cause__ else str(exc)
        return [{"setting": name, "error": message, "line": f"{name}: {message}"}]
    out = []
    for e in exc.errors():
        name = setting_name(tuple(e["loc"]))
        value = e.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) and len(str(value)) <= 80 else ""
        if any(word in name for word in ("SECRET", "TOKEN", "PASSWORD", "PRIVATE_KEY")):
            shown = ""
        message = e["msg"].removeprefix("Value error, ")
        out.append({"setting": name, "error": message, "line": f"{name}{shown}: {message}"})
    return out


def explain(exc: BaseException) -> tuple[str, int]:
    """The one-line message and the exit code for an exception that ended a command."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `smith jobs` alone: the help is already printed
        return "", USAGE
    if isinstance(exc, typer.TyperException):  # a command line click cannot parse (usage errors: exit code 2)
        return exc.format_message() + _usage_hint(exc), exc.exit_code
    if isinstance(exc, typer.Abort | KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(exc, SmithError):
        return exc.message, 1
    if isinstance(exc, SettingsError):
        return "invalid setting " + setting_errors(exc)[0]["line"], 1
    if isinstance(exc, ValidationError):
        if exc.title.endswith("Settings"):
            errors = setting_errors(exc)
            return "invalid setting " + "; ".join(e["line"] for e in errors), 1
        return f"invalid {exc.title}: {exc.errors()[0]['msg']}", 1
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach {_url(exc)}: {str(exc) or type(exc).__name__}", 1
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}", 1
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename:
            return f"{exc.filename}: {exc.strerror}", 1
        return str(exc) or type(exc).__name__, 1
    return f"unexpected {type(exc).__name__}: {exc} (run with SMITH_DEBUG=1 for the traceback)", 1


def _url(exc: httpx.TransportError) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # no request attached
        return "the server"


def _usage_hint(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""
