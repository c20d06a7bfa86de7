"""Workflow commands in a step's output (``::name key=value::message``), the masker, and the file commands
(``GITHUB_OUTPUT``, ``GITHUB_ENV``, ``GITHUB_PATH``, ``GITHUB_STATE``: ``key=value`` lines and the heredoc form
``key<<DELIMITER``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smith.workflows.errors import WorkflowError

COMMAND = re.compile(r"^::([A-Za-z0-9_.-]+)(?: ([^:]*))?::(.*)$")


def unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(text: str) -> str:
    return unescape_data(text).replace("%3A", ":").replace("%2C", ",")


@dataclass
class Command:
    name: str
    props: dict[str, str]
    message: str


def parse_command(line: str) -> Command | None:
    m = COMMAND.match(line.strip())
    if not m:
        return None
    props: dict[str, str] = {}
    for part in (m.group(2) or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            props[k.strip()] = unescape_property(v)
    return Command(m.group(1).lower(), props, unescape_data(m.group(3)))


class Masker:
    """Values never shown: secrets and ``add-mask`` values, replaced by ``***`` (longest first, each line of a
    multi-line secret too)."""

    def __init__(self, values: list[str] | None = None) -> None:
        self.values: list[str] = []
        for v in values or []:
            self.add(v)

    def add(self, value: str) -> None:
        for part in [value, *value.splitlines()]:
            part = part.strip() if part != value else part
            if part and part not in self.values and len(part) >= 1:
                self.values.append(part)
        self.values.sort(key=len, reverse=True)

    def mask(self, text: str) -> str:
        for v in self.values:
            if v in text:
                text = text.replace(v, "***")
        return text


def parse_file_command(text: str, what: str) -> list[tuple[str, str]]:
    """``key=value`` lines and ``key<<DELIM`` ... ``DELIM`` blocks, in order."""
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        i += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals < 0 or heredoc < equals):
            key, delim = line[:heredoc], line[heredoc + 2 :]
            if not key or not delim:
                raise WorkflowError(f"{what}: invalid heredoc line {line!r}")
            body: list[str] = []
            while i < len(lines) and lines[i].rstrip("\r") != delim:
                body.append(lines[i].rstrip("\r"))
                i += 1
            if i >= len(lines):
                raise WorkflowError(f"{what}: matching delimiter not found {delim!r}")
            i += 1
            out.append((key, "\n".join(body)))
        elif equals > 0:
            out.append((line[:equals], line[equals + 1 :]))
        else:
            raise WorkflowError(f"{what}: invalid line {line!r} (expected key=value or key<<DELIMITER)")
    return out


@dataclass
class StepOutput:
    """What a step's output lines said: outputs, state, env, path, annotations, masks; and what to show."""

    outputs: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    annotations: list[str] = field(default_factory=list)
    stopped: str | None = None  # the stop-commands token while commands are off


def process_line(line: str, result: StepOutput, masker: Masker) -> tuple[str, str] | None:
    """Handle a workflow command in ``line``; return what to show, ``(kind, masked text)`` with kind one of
    line, group, endgroup, annotation; or None to hide it."""
    cmd = parse_command(line)
    if cmd is None:
        return "line", masker.mask(line)
    if result.stopped is not None:
        if cmd.name == result.stopped:
            result.stopped = None
            return None
        return "line", masker.mask(line)
    name = cmd.name
    if name == "add-mask":
        masker.add(cmd.message)
        return None
    if name == "stop-commands":
        result.stopped = cmd.message
        return None
    if name == "set-output":
        result.outputs[cmd.props.get("name", "")] = cmd.message
        return None
    if name == "save-state":
        result.state[cmd.props.get("name", "")] = cmd.message
        return None
    if name in ("error", "warning", "notice"):
        where = ""
        if "file" in cmd.props:
            where = cmd.props["file"] + (f":{cmd.props['line']}" if "line" in cmd.props else "")
            if "col" in cmd.props:
                where += f":{cmd.props['col']}"
        title = cmd.props.get("title")
        text = masker.mask(
            f"{name.capitalize()}: " + (f"{where}: " if where else "") + (f"{title}: " if title else "") + cmd.message
        )
        result.annotations.append(text)
        return "annotation", text
    if name == "group":
        return "group", masker.mask(cmd.message)
    if name == "endgroup":
        return "endgroup", ""
    if name in ("debug", "echo"):
        return None
    return "line", masker.mask(line)
