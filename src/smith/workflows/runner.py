"""One job, driven from the host: steps one at a time through the guest agent (steps mode).

Everything but running commands happens here: expressions, ``if``, env, the workflow commands in the output,
the file commands (outputs, env, path, state, summary), masking, outcomes and conclusions. The guest only
writes files, runs a command and hands back the file commands' contents.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smith.errors import SmithError
from smith.workflows.commands import Masker, StepOutput, parse_file_command, process_line
from smith.workflows.context import RunInfo, github_env
from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import Scope, evaluate_if, interpolate, interpolate_tree, to_str, truthy
from smith.workflows.model import Job, Step
from smith.workflows.session import GuestSession

FILE_COMMANDS = ("output", "env", "path", "state", "step_summary")
SHELLS = {
    "bash": "bash --noprofile --norc -eo pipefail {0}",
    "sh": "sh -e {0}",
    "python": "python {0}",
}
EXTENSIONS = {"python": ".py"}


class Reporter(Protocol):
    def job_started(self, key: str, name: str) -> None: ...
    def step_started(self, key: str, name: str) -> None: ...
    def line(self, key: str, kind: str, text: str) -> None: ...
    def step_finished(self, key: str, name: str, conclusion: str, seconds: float) -> None: ...
    def job_finished(self, key: str, result: str, seconds: float) -> None: ...


@dataclass
class Frame:
    """Where steps run: the job itself, or a composite action (its own steps, inputs, env and path)."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    action_path: str = ""
    action_repository: str = ""
    status: str = "success"  # success | failure | cancelled


@dataclass
class JobResult:
    key: str
    job_id: str
    result: str  # success | failure | cancelled | skipped
    outputs: dict[str, str]
    seconds: float
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (name, conclusion, seconds)
    summary: str = ""
    error: str = ""
    index: int = 0  # the matrix combination's place, for listing in GitHub's order


@dataclass
class Exec:
    """One command's outcome: exit code and what its file commands and workflow commands said."""

    code: int
    out: StepOutput
    env: dict[str, str]
    state: dict[str, str]


class JobRunner:
    def __init__(
        self,
        info: RunInfo,
        workflow_env: dict[str, Any],
        workflow_defaults: dict[str, Any],
        job: Job,
        key: str,
        session: GuestSession,
        reporter: Reporter,
        *,
        matrix: dict[str, Any] | None = None,
        strategy: dict[str, Any] | None = None,
        needs: dict[str, Any] | None = None,
        masker: Masker | None = None,
        actions: Any = None,
    ) -> None:
        self.info = info
        self.job = job
        self.key = key
        self.session = session
        self.reporter = reporter
        self.matrix = matrix or {}
        self.strategy = strategy or {}
        self.needs = needs or {}
        self.masker = masker or Masker(list(info.secrets.values()))
        self.workflow_env = workflow_env
        self.defaults = {**workflow_defaults, **job.defaults_run}
        self.env: dict[str, str] = {}  # workflow + job env, evaluated
        self.file_env: dict[str, str] = {}  # from GITHUB_ENV
        self.path_prepend: list[str] = []
        self.summary: list[str] = []
        self.posts: list[Callable[[], Awaitable[None]]] = []
        self.counter = 0
        self.step_log: list[tuple[str, str, float]] = []
        from smith.workflows.actions import Actions

        self.actions = actions or Actions(self)

    # ------------------------------------------------------------ paths and scopes

    @property
    def workspace(self) -> str:
        return f"{self.session.workdir}/{self.info.repo_name}"

    @property
    def temp(self) -> str:
        return f"{self.session.workdir}/_temp"

    def host_workspace(self) -> Path:
        if self.session.host_workdir is not None and (self.session.host_workdir / self.info.repo_name).is_dir():
            return self.session.host_workdir / self.info.repo_name
        return self.info.repo_dir

    def contexts(self, frame: Frame, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        github = self.info.github(self.job.id, self.workspace)
        github.update(
            event_path=f"{self.temp}/_github_workflow/event.json",
            action_path=frame.action_path,
            action_repository=frame.action_repository,
        )
        return {
            "github": github,
            "env": {**self.env, **self.file_env, **frame.env, **(extra_env or {})},
            "vars": dict(self.info.vars),
            "secrets": {"GITHUB_TOKEN": "", **self.info.secrets},
            "inputs": frame.inputs,
            "matrix": self.matrix or None,  # null for a job without a matrix, as on GitHub
            "strategy": self.strategy,
            "needs": self.needs,
            "steps": frame.steps,
            "job": {"status": frame.status},
            "runner": {
                "os": "Linux",
                "arch": "X64",
                "name": f"smith-{self.key}",
                "temp": self.temp,
                "tool_cache": f"{self.session.workdir}/_tool",
                "debug": "",
                "environment": "self-hosted",
            },
        }

    def scope(self, frame: Frame, extra_env: dict[str, str] | None = None) -> Scope:
        return Scope(self.contexts(frame, extra_env), status=frame.status, workspace=self.host_workspace())

    def evaluate_env(self, env: dict[str, Any], frame: Frame, base: dict[str, str] | None = None) -> dict[str, str]:
        """An ``env`` mapping's values. As on GitHub, ``env.X`` inside the mapping is the value from outside it
        (``base``), never a sibling key's: a mapping's variables cannot be defined in terms of each other."""
        scope = self.scope(frame, base)
        return {str(k): to_str(interpolate_tree(v, scope)) for k, v in env.items()}

    # ------------------------------------------------------------ the job

    async def run(self) -> JobResult:
        started = time.monotonic()
        name = self.key
        self.reporter.job_started(self.key, name)
        frame = Frame(inputs=dict(self.info.inputs))
        error = ""
        try:
            await self.session.probe()
            self.env = self.evaluate_env(self.workflow_env, frame)
            self.env.update(self.evaluate_env(self.job.env, frame, self.env))
            await self.session.command(
                {"write": {"_temp/_github_workflow/event.json": json.dumps(self.info.event, indent=2)}}
            )
            await self.session.command({"argv": ["mkdir", "-p", self.workspace, f"{self.session.workdir}/_tool"]})
            await self.actions.prepare(self.job.steps)
            await self.run_steps(frame, self.job.steps)
        except SmithError as exc:
            error = exc.message
            self.reporter.line(self.key, "error", self.masker.mask(f"Error: {exc.message}"))
            frame.status = "failure"
        for post in reversed(self.posts):
            try:
                await post()
            except SmithError as exc:
                self.reporter.line(self.key, "error", self.masker.mask(f"Error: {exc.message}"))
                frame.status = "failure"
        outputs: dict[str, str] = {}
        for k, v in self.job.outputs.items():
            try:
                value = to_str(interpolate_tree(v, self.scope(frame)))
            except WorkflowError as exc:
                self.reporter.line(self.key, "error", f"Error: output {k}: {exc.message}")
                continue
            outputs[k] = value
        seconds = time.monotonic() - started
        result = frame.status
        self.reporter.job_finished(self.key, result, seconds)
        return JobResult(self.key, self.job.id, result, outputs, seconds, self.step_log, "".join(self.summary), error)

    async def run_steps(self, frame: Frame, steps: list[Step], prefix: str = "") -> None:
        for step in steps:
            await self.run_step(frame, step, prefix)

    async def run_step(self, frame: Frame, step: Step, prefix: str = "") -> None:
        scope = self.scope(frame)
        name = prefix + self.masker.mask(self._display(step, scope))
        try:
            go = evaluate_if(step.if_, scope)
        except WorkflowError as exc:
            self.reporter.line(self.key, "error", f"Error: {name}: 'if': {exc.message}")
            frame.status = "failure"
            self._record(frame, step, "failure", "failure", {}, name, 0.0)
            return
        if not go:
            self._record(frame, step, "skipped", "skipped", {}, name, 0.0)
            return
        started = time.monotonic()
        self.reporter.step_started(self.key, name)
        outputs: dict[str, str] = {}
        try:
            if step.run is not None:
                ex = await self.run_script(frame, step)
                outputs = ex.out.outputs
                ok = ex.code == 0
                if not ok:
                    self.reporter.line(self.key, "error", f"Error: Process completed with exit code {ex.code}.")
            else:
                ok, outputs = await self.actions.run(frame, step, name)
        except WorkflowError as exc:
            self.reporter.line(self.key, "error", self.masker.mask(f"Error: {exc.message}"))
            ok = False
        outcome = "success" if ok else "failure"
        conclusion = outcome
        if not ok:
            try:
                keep_going = truthy(interpolate_tree(step.continue_on_error, scope))
            except WorkflowError:
                keep_going = False
            if keep_going:
                conclusion = "success"
            else:
                frame.status = "failure"
        self._record(frame, step, outcome, conclusion, outputs, name, time.monotonic() - started)

    def _display(self, step: Step, scope: Scope) -> str:
        try:
            return interpolate(step.display, scope)
        except WorkflowError:
            return step.display

    def _record(
        self, frame: Frame, step: Step, outcome: str, conclusion: str, outputs: dict[str, str], name: str, secs: float
    ) -> None:
        if step.id:
            frame.steps[step.id] = {"outputs": outputs, "outcome": outcome, "conclusion": conclusion}
        self.step_log.append((name, conclusion if outcome != "failure" else outcome, secs))
        self.reporter.step_finished(self.key, name, conclusion if outcome == conclusion else outcome, secs)

    # ------------------------------------------------------------ commands

    def shell_argv(self, shell: str | None, path: str) -> list[str]:
        tools = self.session.tools
        if not shell:
            template = "bash -e {0}" if "bash" in tools else "sh -e {0}"
        else:
            template = SHELLS.get(shell, shell)
            if shell == "python" and "python" not in tools and "python3" in tools:
                template = "python3 {0}"
            if shell in ("pwsh", "powershell", "cmd"):
                raise WorkflowError(f"shell {shell!r} is not available in Smith's Linux guests")
            if "{0}" not in template:
                raise WorkflowError(f"custom shell {shell!r} must contain '{{0}}' where the script path goes")
        argv = shlex.split(template)
        return [path if a == "{0}" else a.replace("{0}", path) for a in argv]

    async def run_script(self, frame: Frame, step: Step) -> Exec:
        scope = self.scope(frame)
        script = interpolate(step.run or "", scope)
        shell = step.shell or self.defaults.get("shell")
        shell = interpolate(str(shell), scope) if shell else None
        wd = step.working_directory or self.defaults.get("working-directory")
        cwd = interpolate(str(wd), scope) if wd else ""
        ext = EXTENSIONS.get(shell or "", ".sh")
        rel = f"_temp/{uuid.uuid4()}{ext}"
        argv = self.shell_argv(shell, f"{self.session.workdir}/{rel}")
        step_env = self.evaluate_env(step.env, frame, {**self.env, **self.file_env, **frame.env})
        ex = await self.execute(frame, argv, step_env, cwd, self._timeout(step, scope), {rel: script}, step.id)
        return ex

    def _timeout(self, step: Step, scope: Scope) -> float | None:
        if step.timeout_minutes is None:
            return None
        value = interpolate_tree(step.timeout_minutes, scope)
        try:
            return float(value) * 60
        except (TypeError, ValueError):
            raise WorkflowError(f"timeout-minutes must be a number, not {value!r}") from None

    def base_env(self, frame: Frame, action: str) -> dict[str, str]:
        gh = self.info.github(self.job.id, self.workspace, action)
        gh["event_path"] = f"{self.temp}/_github_workflow/event.json"
        env = github_env(gh)
        env.update(
            {
                "RUNNER_OS": "Linux",
                "RUNNER_ARCH": "X64",
                "RUNNER_NAME": f"smith-{self.key}",
                "RUNNER_TEMP": self.temp,
                "RUNNER_TOOL_CACHE": f"{self.session.workdir}/_tool",
                "RUNNER_WORKSPACE": self.session.workdir,
                "RUNNER_ENVIRONMENT": "self-hosted",
            }
        )
        if frame.action_path:
            env["GITHUB_ACTION_PATH"] = frame.action_path
            env["GITHUB_ACTION_REPOSITORY"] = frame.action_repository
        return env

    async def execute(
        self,
        frame: Frame,
        argv: list[str],
        step_env: dict[str, str],
        cwd: str,
        timeout: float | None,  # noqa: ASYNC109 - the guest enforces it, killing the command
        write: dict[str, str] | None = None,
        step_id: str | None = None,
        state_env: dict[str, str] | None = None,
    ) -> Exec:
        """Run one command in the guest with a step's environment; apply its workflow and file commands."""
        self.counter += 1
        action = step_id or f"__run_{self.counter}"
        files = {k: f"_temp/_runner_file_commands/{k}_{uuid.uuid4().hex[:12]}" for k in FILE_COMMANDS}
        env = self.base_env(frame, action)
        env.update(
            {
                f"GITHUB_{'OUTPUT' if k == 'output' else k.upper()}": f"{self.session.workdir}/{p}"
                for k, p in files.items()
            }
        )
        env.update(self.env)
        env.update(self.file_env)
        env.update(frame.env)
        env.update(state_env or {})
        env.update(step_env)
        env["PATH"] = ":".join([*self.path_prepend, step_env.get("PATH") or self.session.path])
        where = cwd if cwd.startswith("/") else f"{self.info.repo_name}/{cwd}" if cwd else self.info.repo_name
        out = StepOutput()

        def on_line(stream: str, text: str) -> None:
            shown = process_line(text, out, self.masker)
            if shown is not None:
                self.reporter.line(self.key, shown[0], shown[1])

        message: dict[str, Any] = {
            "argv": argv,
            "env": env,
            "cwd": where,
            "collect": list(files.values()),
            "write": write or {},
        }
        if timeout:
            message["timeout"] = timeout
        code, collected = await self.session.command(message, on_line)
        state = dict(out.state)
        for kind, rel in files.items():
            text = collected.get(rel, "")
            if not text:
                continue
            if kind == "step_summary":
                self.summary.append(self.masker.mask(text))
                continue
            if kind == "path":
                self.path_prepend[:0] = [p for p in reversed(text.splitlines()) if p.strip()]
                continue
            pairs = parse_file_command(text, f"GITHUB_{kind.upper()}")
            if kind == "output":
                out.outputs.update(pairs)
            elif kind == "env":
                self.file_env.update(pairs)
            else:
                state.update(pairs)
        return Exec(code, out, self.file_env, state)
