"""``uses`` steps: local actions (``./path``), composite and JavaScript actions, ``actions/checkout`` done
natively, ``actions/cache`` (its mirrored copy against Smith's cache server, else a no-op miss), other remote
actions from a local mirror (``<mirror>/owner/repo@ref``); ``docker://`` and anything unresolved is an error
naming the step, raised before the job's first step runs."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smith.workflows import artifacts
from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import evaluate_if, interpolate_tree, to_str
from smith.workflows.model import Step
from smith.workflows.parser import _Ctx, parse_step
from smith.workflows.yamlload import LineDict, load

if TYPE_CHECKING:
    from smith.workflows.runner import Frame, JobRunner

NODE = ("node12", "node16", "node20", "node24")
CACHE_CLIENT = Path(__file__).resolve().parent.parent / "guest" / "cache_client.py"
USES = re.compile(r"^(?P<owner>[^/@]+)/(?P<repo>[^/@]+)(?:/(?P<sub>[^@]+))?@(?P<ref>.+)$")
NATIVE_CACHE = ("actions/cache", "actions/cache/restore", "actions/cache/save")
# setup-* actions Smith does natively: it installs nothing, it checks that the guest's tool matches the version
# asked for (input, the command printing the version, the outputs named after it).
SETUP = {
    "actions/setup-python": ("python-version", "python3 -c \"import sys; print('%d.%d.%d' % sys.version_info[:3])\""),
    "actions/setup-node": ("node-version", "node -p process.versions.node"),
    "actions/setup-go": ("go-version", "go env GOVERSION | sed s/^go//"),
    "actions/setup-java": ("java-version", 'java -version 2>&1 | sed -n \'s/.*version "\\([^"]*\\)".*/\\1/p\''),
}
SHIMS = (  # `python` and `pip` for the guest's python3, as setup-python leaves them on PATH
    'mkdir -p "$1" && cd "$1" && ln -sf "$(command -v python3)" python && '
    "printf '#!/bin/sh\\nexec python3 -m pip \"$@\"\\n' > pip && chmod +x pip"
)


@dataclass
class Action:
    """A resolved action: its metadata, where it lives on the host and in the guest."""

    uses: str
    meta: LineDict
    host_dir: Path
    guest_dir: str  # relative to the guest's work dir
    repository: str = ""

    @property
    def runs(self) -> dict[str, Any]:
        runs = self.meta.get("runs")
        return runs if isinstance(runs, dict) else {}


def read_metadata(directory: Path, uses: str) -> LineDict:
    for name in ("action.yml", "action.yaml"):
        path = directory / name
        if path.is_file():
            meta = load(path.read_text(encoding="utf-8"), str(path))
            if not isinstance(meta, LineDict) or not isinstance(meta.get("runs"), dict):
                raise WorkflowError(f"action {uses}: {name} has no 'runs' mapping", file=str(path))
            return meta
    raise WorkflowError(f"action {uses}: no action.yml or action.yaml in {directory}")


class Actions:
    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.uploaded: set[str] = set()
        self.pre_state: dict[int, dict[str, str]] = {}  # what each step's pre saved (GITHUB_STATE)

    # ------------------------------------------------------------ resolution

    def where(self, step: Step) -> str:
        return f"step {step.display!r} (line {step.line})"

    def kind(self, step: Step) -> str:
        uses = (step.uses or "").strip()
        if uses.startswith("docker://"):
            raise WorkflowError(f"{self.where(step)}: docker:// actions are not supported by Smith's executor")
        if uses.startswith("./") or uses.startswith("../"):
            return "local"
        m = USES.match(uses)
        if not m:
            raise WorkflowError(f"{self.where(step)}: 'uses: {uses}' is not ./path, owner/repo@ref or docker://")
        name = f"{m['owner']}/{m['repo']}" + (f"/{m['sub']}" if m["sub"] else "")
        if name.lower() == "actions/checkout":
            return "checkout"
        if self.mirrored(uses) is not None:
            return "mirror"
        if name.lower() in NATIVE_CACHE:
            return "cache"
        if name.lower() in SETUP:
            return "setup"
        if name.lower() in (artifacts.UPLOAD, artifacts.DOWNLOAD):
            return "upload" if name.lower() == artifacts.UPLOAD else "download"
        if self.runner.info.llm is not None:
            return "llm"
        raise WorkflowError(self.unavailable(step))

    def unavailable(self, step: Step) -> str:
        uses = (step.uses or "").strip()
        m = USES.match(uses)
        mirror = self.runner.info.action_mirror
        hint = " (no action mirror set)"
        if mirror and m:
            hint = f" (looked in {mirror}/{m['owner']}/{m['repo']}@{m['ref']})"
        return f"{self.where(step)}: remote action {uses} is not available{hint}"

    def mirrored(self, uses: str) -> Path | None:
        mirror = self.runner.info.action_mirror
        m = USES.match(uses)
        if mirror is None or not m:
            return None
        base = mirror / m["owner"] / f"{m['repo']}@{m['ref']}"
        return base if base.is_dir() else None

    async def prepare(self, steps: list[Step]) -> None:
        """Check every ``uses`` of the job before its first step; run the ``pre`` of JavaScript actions."""
        for step in steps:
            if step.uses:
                self.kind(step)
        for step in steps:
            if step.uses and self.kind(step) == "mirror":
                action = await self.resolve(step)
                _, _, self.pre_state[step.index] = await self.js_phase(self.runner_frame(), step, action, "pre")

    def runner_frame(self) -> Frame:
        from smith.workflows.runner import Frame

        return Frame(inputs=dict(self.runner.info.inputs))

    async def resolve(self, step: Step) -> Action:
        uses = (step.uses or "").strip()
        if uses.startswith(("./", "../")):
            rel = uses[2:].strip("/") if uses.startswith("./") else uses
            host = (self.runner.host_workspace() / rel).resolve()
            return Action(uses, read_metadata(host, uses), host, f"{self.runner.info.repo_name}/{rel}")
        base = self.mirrored(uses)
        m = USES.match(uses)
        if base is None or not m:
            raise WorkflowError(f"{self.where(step)}: remote action {uses} is not available")
        guest = f"_actions/{m['owner']}/{m['repo']}/{m['ref']}"
        if guest not in self.uploaded:
            await self.runner.session.upload(base, guest, exclude=(".git",))
            self.uploaded.add(guest)
        sub = m["sub"] or ""
        host = base / sub if sub else base
        return Action(
            uses, read_metadata(host, uses), host, f"{guest}/{sub}" if sub else guest, f"{m['owner']}/{m['repo']}"
        )

    # ------------------------------------------------------------ running

    async def run(self, frame: Frame, step: Step, name: str) -> tuple[bool, dict[str, str]]:
        kind = self.kind(step)
        if kind == "checkout":
            return await self.checkout(frame, step)
        if kind == "cache" and self.runner.info.cache:
            return await self.native_cache(frame, step)
        if kind == "cache":
            self.runner.reporter.line(
                self.runner.key,
                "annotation",
                f"Notice: {step.uses}: no cache server configured and no mirrored copy of the action: cache miss",
            )
            return True, {"cache-hit": "false"}
        if kind == "llm":
            return await self.ask_llm(frame, step)
        if kind == "setup":
            return await self.setup_tool(frame, step)
        if kind == "upload":
            return await artifacts.upload(self.runner, frame, step)
        if kind == "download":
            return await artifacts.download(self.runner, frame, step)
        action = await self.resolve(step)
        using = str(action.runs.get("using", ""))
        if using == "composite":
            return await self.composite(frame, step, action)
        if using in NODE:
            return await self.javascript(frame, step, action)
        if using == "docker":
            raise WorkflowError(f"{self.where(step)}: docker actions ({step.uses}) are not supported")
        raise WorkflowError(f"{self.where(step)}: action {step.uses} uses {using!r}, which Smith cannot run")

    def inputs(self, frame: Frame, step: Step, action: Action) -> dict[str, str]:
        scope = self.runner.scope(frame)
        given = {str(k).lower(): to_str(interpolate_tree(v, scope)) for k, v in step.with_.items()}
        declared = action.meta.get("inputs") or {}
        out: dict[str, str] = {}
        for key, spec in declared.items():
            spec = spec if isinstance(spec, dict) else {}
            if key.lower() in given:
                out[key] = given.pop(key.lower())
            elif "default" in spec:
                out[key] = to_str(interpolate_tree(spec["default"], scope))
            elif spec.get("required"):
                raise WorkflowError(f"{self.where(step)}: input {key!r} of {step.uses} is required")
            else:
                out[key] = ""
        out.update(given)  # undeclared inputs still reach the action (GitHub warns)
        return out

    async def composite(self, frame: Frame, step: Step, action: Action) -> tuple[bool, dict[str, str]]:
        from smith.workflows.runner import Frame

        inputs = self.inputs(frame, step, action)
        step_env = self.runner.evaluate_env(step.env, frame, {**self.runner.env, **frame.env})
        inner = Frame(
            inputs=inputs,
            env={**frame.env, **step_env},
            action_path=f"{self.runner.session.workdir}/{action.guest_dir}",
            action_repository=action.repository,
        )
        c = _Ctx(str(action.host_dir / "action.yml"))
        raw_steps = action.runs.get("steps") or []
        if not isinstance(raw_steps, list):
            raise WorkflowError(f"action {step.uses}: runs.steps must be a list")
        steps = [parse_step(c, f"action {step.uses}", i, s, action.meta) for i, s in enumerate(raw_steps)]
        inner_frame_status = frame.status
        inner.status = "success" if inner_frame_status == "success" else inner_frame_status
        prefix = f"{step.display} > "
        await self.runner.run_steps(inner, steps, prefix)
        outputs: dict[str, str] = {}
        for key, spec in (action.meta.get("outputs") or {}).items():
            value = spec.get("value") if isinstance(spec, dict) else None
            outputs[key] = to_str(interpolate_tree(value, self.runner.scope(inner))) if value is not None else ""
        return inner.status == "success", outputs

    async def javascript(self, frame: Frame, step: Step, action: Action) -> tuple[bool, dict[str, str]]:
        state = self.pre_state.get(step.index)
        if state is None and action.runs.get("pre"):  # a local action is there only now: its pre runs now
            _, _, state = await self.js_phase(frame, step, action, "pre")
        ok, outputs, main_state = await self.js_phase(frame, step, action, "main", state)
        state = {**(state or {}), **main_state}
        post = action.runs.get("post")
        if post:
            saved_status = frame

            async def run_post() -> None:
                await self.js_phase(saved_status, step, action, "post", state)

            self.runner.posts.append(run_post)
        return ok, outputs

    async def js_phase(
        self, frame: Frame, step: Step, action: Action, phase: str, state: dict[str, str] | None = None
    ) -> tuple[bool, dict[str, str], dict[str, str]]:
        runs = action.runs
        entry = runs.get(phase)
        if not entry:
            return True, {}, {}
        using = str(runs.get("using", ""))
        if using not in NODE:
            return True, {}, {}
        if phase != "main":
            condition = runs.get(f"{phase}-if", "always()")
            if not evaluate_if(condition, self.runner.scope(frame)):
                return True, {}, {}
        node = self.runner.session.tools.get("node")
        if not node:
            raise WorkflowError(f"{self.where(step)}: {step.uses} needs node ({using}), which the guest does not have")
        inputs = self.inputs(frame, step, action)
        env = {f"INPUT_{k.replace(' ', '_').upper()}": v for k, v in inputs.items()}
        env.update(self.runner.evaluate_env(step.env, frame, {**self.runner.env, **frame.env}))
        from smith.workflows.runner import Frame as F

        inner = F(
            steps=frame.steps,
            inputs=frame.inputs,
            env=frame.env,
            action_path=f"{self.runner.session.workdir}/{action.guest_dir}",
            action_repository=action.repository,
            status=frame.status,
        )
        state_env = {f"STATE_{k}": v for k, v in (state or {}).items()}
        title = f"{phase.capitalize()} {step.display}"
        started = time.monotonic()
        if phase != "main":
            self.runner.reporter.step_started(self.runner.key, title)
        ex = await self.runner.execute(
            inner,
            [node, f"{self.runner.session.workdir}/{action.guest_dir}/{entry}"],
            env,
            "",
            None,
            None,
            step.id,
            state_env,
        )
        if ex.code != 0:
            self.runner.reporter.line(self.runner.key, "error", f"Error: {phase} of {step.uses} exited {ex.code}")
            if phase != "main":
                frame.status = "failure"
        if phase != "main":
            result = "success" if ex.code == 0 else "failure"
            self.runner.reporter.step_finished(self.runner.key, title, result, time.monotonic() - started)
        return ex.code == 0, ex.out.outputs, ex.state

    async def native_cache(self, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
        """actions/cache (and /restore, /save) against the job's cache server, by guest/cache_client.py."""
        scope = self.runner.scope(frame)
        given = {str(k).lower(): to_str(interpolate_tree(v, scope)) for k, v in step.with_.items()}
        for required in ("path", "key"):
            if not given.get(required, "").strip():
                raise WorkflowError(f"{self.where(step)}: input {required!r} of {step.uses} is required")
        python = self.runner.session.tools.get("python3")
        if not python:
            raise WorkflowError(f"{self.where(step)}: {step.uses} needs python3 in the guest")
        script = f"{self.runner.session.workdir}/_temp/smith-cache.py"
        source = CACHE_CLIENT.read_text(encoding="utf-8")
        which = (step.uses or "").split("@")[0].lower()
        key, paths = given["key"], given["path"]

        async def call(action: str, *extra: str) -> tuple[int, dict[str, str]]:
            argv = [python, script, action, key, paths, *extra]
            ex = await self.runner.execute(frame, argv, {}, "", None, {"_temp/smith-cache.py": source}, step.id)
            return ex.code, ex.out.outputs

        if which.endswith("/save"):
            code, outputs = await call("save")
            return code == 0, outputs
        code, outputs = await call("restore", given.get("restore-keys", ""))
        if which == "actions/cache" and outputs.get("cache-hit") != "true":

            async def post() -> None:
                if frame.status != "success":  # actions/cache: post-if success()
                    return
                self.runner.reporter.step_started(self.runner.key, f"Post {step.display}")
                started = time.monotonic()
                done, _ = await call("save")
                result = "success" if done == 0 else "failure"
                self.runner.reporter.step_finished(
                    self.runner.key, f"Post {step.display}", result, time.monotonic() - started
                )

            self.runner.posts.append(post)
        return code == 0, outputs

    async def setup_tool(self, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
        """actions/setup-{python,node,go,java}, natively: the guest's own tool, if it is the version asked for."""
        m = USES.match((step.uses or "").strip())
        assert m is not None
        name = f"{m['owner']}/{m['repo']}".lower()
        key, probe = SETUP[name]
        scope = self.runner.scope(frame)
        wanted = to_str(interpolate_tree(step.with_.get(key, ""), scope)).strip()
        lines: list[str] = []
        code, _ = await self.runner.session.command(
            {"argv": ["/bin/sh", "-c", probe], "env": {"PATH": self.runner.session.path}},
            lambda _s, t: lines.append(t),
        )
        have = lines[0].strip() if code == 0 and lines else ""
        tool = name.split("-", 1)[1]
        if not have:
            raise WorkflowError(f"{self.where(step)}: {step.uses}: the guest has no {tool} (Smith installs no tools)")
        if not version_matches(wanted, have):
            raise WorkflowError(
                f"{self.where(step)}: {step.uses}: {tool} {wanted} asked for, the guest has {have} "
                "(Smith installs no tools: use a guest image with it)"
            )
        if tool == "python":
            shims = f"{self.runner.session.workdir}/_tool/smith-shims"
            await self.runner.session.command({"argv": ["/bin/sh", "-c", SHIMS, "shims", shims]})
            self.runner.path_prepend.insert(0, shims)
        self.runner.reporter.line(self.runner.key, "line", f"Using the guest's {tool} {have}")
        return True, {key: have, f"{tool}-version": have}

    async def ask_llm(self, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
        """A step Smith cannot run: show what the LLM proposes; run it only when enabled."""
        llm = self.runner.info.llm
        scope = self.runner.scope(frame)
        inputs = {str(k): self.runner.masker.mask(to_str(interpolate_tree(v, scope))) for k, v in step.with_.items()}
        commands = await llm.propose(step.uses or "", inputs)
        say = self.runner.reporter.line
        say(self.runner.key, "group", f"LLM proposal ({llm.model}) for {step.uses}")
        for line in commands.splitlines():
            say(self.runner.key, "line", self.runner.masker.mask(line))
        say(self.runner.key, "endgroup", "")
        if not llm.enabled:
            raise WorkflowError(self.unavailable(step) + "; the LLM's proposal is not run (SMITH_LLM_ENABLED is off)")
        rel = f"_temp/llm-{step.index}.sh"
        argv = self.runner.shell_argv("bash", f"{self.runner.session.workdir}/{rel}")
        step_env = self.runner.evaluate_env(step.env, frame, {**self.runner.env, **frame.env})
        ex = await self.runner.execute(frame, argv, step_env, "", None, {rel: commands}, step.id)
        return ex.code == 0, ex.out.outputs

    async def checkout(self, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
        """actions/checkout, natively: this run's repository copied into the workspace (or ``path``)."""
        scope = self.runner.scope(frame)
        inputs = {str(k).lower(): to_str(interpolate_tree(v, scope)) for k, v in step.with_.items()}
        repository = inputs.get("repository") or self.runner.info.repository
        if repository.lower() != self.runner.info.repository.lower():
            raise WorkflowError(f"{self.where(step)}: checkout of another repository ({repository}) is not supported")
        path = inputs.get("path", "").strip("/")
        dest = f"{self.runner.info.repo_name}/{path}" if path else self.runner.info.repo_name
        await self.runner.session.upload(self.runner.info.repo_dir, dest)
        self.runner.reporter.line(
            self.runner.key, "line", f"Checked out {repository} at {self.runner.info.sha[:12] or 'the working tree'}"
        )
        return True, {"ref": self.runner.info.ref, "commit": self.runner.info.sha}


def version_matches(wanted: str, have: str) -> bool:
    """``3.11`` / ``3.x`` / ``20`` / ``>=3.9`` / ``lts/*`` against the guest's version (empty or a list: first)."""
    wanted = wanted.splitlines()[0].strip() if wanted.strip() else ""
    if not wanted or wanted in ("*", "x", "latest", "stable", "node") or wanted.startswith("lts"):
        return True
    if wanted.startswith(">="):
        want = [int(p) for p in re.findall(r"\d+", wanted)]
        got = [int(p) for p in re.findall(r"\d+", have)][: len(want)]
        return got >= want
    prefix = re.sub(r"(\.[x*])+$", "", wanted.lstrip("v^~"))
    return have == prefix or have.startswith(prefix + ".")
