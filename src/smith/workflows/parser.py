"""Read a workflow file into the models of ``model.py``, with located errors (file, line, what is wrong)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from smith.workflows.errors import ExpressionError, WorkflowError
from smith.workflows.expressions import named_values
from smith.workflows.matrix import unknown_exclude_key
from smith.workflows.model import Job, Step, Strategy, Trigger, Workflow
from smith.workflows.yamlload import LineDict, load

JOB_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
FILTERS = ("branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore", "types")
JOB_KEYS = {
    "name", "needs", "if", "runs-on", "strategy", "timeout-minutes", "continue-on-error", "env", "defaults",
    "outputs", "steps", "permissions", "concurrency", "environment", "services", "container", "uses", "with",
    "secrets",
}  # fmt: skip
STEP_KEYS = {
    "id", "name", "if", "run", "uses", "with", "env", "shell", "working-directory", "continue-on-error",
    "timeout-minutes",
}  # fmt: skip
# The contexts an expression may read, per workflow key, from GitHub's context availability table: a workflow
# whose expression there reads another is refused, as GitHub refuses it ("Unrecognized named-value").
CONTEXTS = {
    "jobs.<job_id>.env": ("github", "needs", "strategy", "matrix", "vars", "secrets", "inputs"),
}


class _Ctx:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, what: str, node: Any = None, key: str | None = None) -> WorkflowError:
        line = None
        if isinstance(node, LineDict):
            line = node.line_of(key) if key else node.line
        return WorkflowError(what, file=self.file, line=line)

    def mapping(self, value: Any, what: str, parent: Any, key: str) -> LineDict:
        if value is None:
            empty = LineDict()
            empty.lines = {}
            empty.line = parent.line_of(key) if isinstance(parent, LineDict) else 0
            return empty
        if not isinstance(value, LineDict):
            raise self.fail(f"{what} must be a mapping", parent, key)
        return value

    def strings(self, value: Any, what: str, parent: Any, key: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            return [str(v) for v in value]
        raise self.fail(f"{what} must be a string or a list of strings", parent, key)


def parse_file(path: Path, display: str | None = None) -> Workflow:
    file = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(f"cannot read the workflow: {exc.strerror}", file=file) from exc
    return parse(text, file)


def parse(text: str, file: str = "workflow.yml") -> Workflow:
    c = _Ctx(file)
    doc = load(text, file)
    if not isinstance(doc, LineDict):
        raise WorkflowError("a workflow must be a mapping", file=file, line=1)
    if "on" not in doc:
        raise c.fail("missing 'on': the events that trigger the workflow", doc)
    if "jobs" not in doc:
        raise c.fail("missing 'jobs'", doc)
    on = parse_on(c, doc["on"], doc)
    jobs_node = c.mapping(doc["jobs"], "'jobs'", doc, "jobs")
    if not jobs_node:
        raise c.fail("'jobs' is empty", doc, "jobs")
    jobs = {jid: parse_job(c, jid, spec, jobs_node) for jid, spec in jobs_node.items()}
    check_needs(c, jobs, jobs_node)
    defaults = c.mapping(doc.get("defaults"), "'defaults'", doc, "defaults")
    return Workflow(
        file=file,
        name=str(doc.get("name") or file),
        on=on,
        jobs=jobs,
        env=dict(c.mapping(doc.get("env"), "'env'", doc, "env")),
        defaults_run=dict(c.mapping(defaults.get("run"), "'defaults.run'", defaults, "run")),
        concurrency=doc.get("concurrency"),
        permissions=doc.get("permissions"),
        run_name=doc.get("run-name"),
    )


def parse_on(c: _Ctx, value: Any, doc: LineDict) -> dict[str, Trigger]:
    if isinstance(value, str):
        return {value: Trigger(value)}
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise c.fail("'on' must list event names", doc, "on")
        return {v: Trigger(v) for v in value}
    if not isinstance(value, LineDict):
        raise c.fail("'on' must be an event name, a list of them or a mapping", doc, "on")
    out: dict[str, Trigger] = {}
    for event, spec in value.items():
        if spec is None or event == "schedule":
            out[event] = Trigger(event)
            continue
        spec = c.mapping(spec, f"'on.{event}'", value, event)
        if "branches" in spec and "branches-ignore" in spec:
            raise c.fail(f"'on.{event}': use either 'branches' or 'branches-ignore', not both", spec, "branches")
        if "paths" in spec and "paths-ignore" in spec:
            raise c.fail(f"'on.{event}': use either 'paths' or 'paths-ignore', not both", spec, "paths")
        filters = {f.replace("-", "_"): c.strings(spec[f], f"'on.{event}.{f}'", spec, f) for f in FILTERS if f in spec}
        inputs = dict(c.mapping(spec.get("inputs"), f"'on.{event}.inputs'", spec, "inputs"))
        out[event] = Trigger(event, inputs={k: dict(v or {}) for k, v in inputs.items()}, **filters)
    return out


def parse_job(c: _Ctx, jid: str, spec: Any, jobs: LineDict) -> Job:
    if not JOB_ID.match(jid):
        raise c.fail(f"job id {jid!r} must start with a letter or _ and hold only letters, digits, - and _", jobs, jid)
    if not isinstance(spec, LineDict):
        raise c.fail(f"job {jid!r} must be a mapping", jobs, jid)
    if "uses" in spec:
        why = c.fail(
            f"job {jid!r}: reusable workflows (job-level 'uses') are not supported by Smith's executor", jobs, jid
        )
        return _unsupported_job(c, jid, spec, jobs, why.message)
    for unsupported in ("services", "container"):
        if unsupported in spec:
            why = c.fail(f"job {jid!r}: '{unsupported}' is not supported by Smith's executor", spec, unsupported)
            return _unsupported_job(c, jid, spec, jobs, why.message)
    unknown = sorted(set(spec) - JOB_KEYS)
    if unknown:
        raise c.fail(f"job {jid!r}: unknown key {unknown[0]!r}", spec, unknown[0])
    if "runs-on" not in spec:
        raise c.fail(f"job {jid!r}: missing 'runs-on'", jobs, jid)
    steps_node = spec.get("steps")
    if not isinstance(steps_node, list) or not steps_node:
        raise c.fail(f"job {jid!r}: 'steps' must be a non-empty list", spec, "steps" if "steps" in spec else None)
    steps = [parse_step(c, jid, i, s, spec) for i, s in enumerate(steps_node)]
    ids = [s.id for s in steps if s.id]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise c.fail(f"job {jid!r}: step id {dup!r} is used twice", spec, "steps")
    strategy = None
    if "strategy" in spec:
        st = c.mapping(spec["strategy"], f"job {jid!r}: 'strategy'", spec, "strategy")
        matrix = st.get("matrix")
        if matrix is not None and not isinstance(matrix, LineDict | str):
            raise c.fail(f"job {jid!r}: 'strategy.matrix' must be a mapping or an expression", st, "matrix")
        if isinstance(matrix, LineDict) and (stray := unknown_exclude_key(matrix)) is not None:
            entry, key, what = stray
            raise c.fail(f"job {jid!r}: 'strategy.matrix.exclude': {what}", entry, key)
        strategy = Strategy(matrix=matrix, fail_fast=st.get("fail-fast", True), max_parallel=st.get("max-parallel"))
    defaults = c.mapping(spec.get("defaults"), f"job {jid!r}: 'defaults'", spec, "defaults")
    env = c.mapping(spec.get("env"), f"job {jid!r}: 'env'", spec, "env")
    check_contexts(c, f"job {jid!r}: 'env", "jobs.<job_id>.env", env)
    return Job(
        **_ordering(c, jid, spec, jobs),
        strategy=strategy,
        timeout_minutes=spec.get("timeout-minutes", 360),
        continue_on_error=spec.get("continue-on-error", False),
        env=dict(env),
        defaults_run=dict(c.mapping(defaults.get("run"), f"job {jid!r}: 'defaults.run'", defaults, "run")),
        outputs=dict(c.mapping(spec.get("outputs"), f"job {jid!r}: 'outputs'", spec, "outputs")),
        steps=steps,
        concurrency=spec.get("concurrency"),
    )


def check_contexts(c: _Ctx, where: str, key: str, values: LineDict) -> None:
    """Refuse a value of ``values`` (the mapping at workflow key ``key``, e.g. a job's ``env``) whose expressions
    read a context ``CONTEXTS`` does not give that key; located at the value's line. An expression that does not
    parse is left to be reported where it is evaluated."""
    allowed = CONTEXTS[key]
    for name, value in values.items():
        if not isinstance(value, str):
            continue
        try:
            read = named_values(value)
        except ExpressionError:
            continue
        unknown = sorted(read - set(allowed))
        if unknown:
            what = f"unrecognized named-value: {unknown[0]!r} ({key} may only read {', '.join(allowed)})"
            raise c.fail(f"{where}.{name}': {what}", values, name)


def _unsupported_job(c: _Ctx, jid: str, spec: LineDict, jobs: LineDict, why: str) -> Job:
    """A job Smith cannot run: kept with what orders it (``needs``, ``if``) so the workflow's other jobs run and
    this one fails with ``why`` (located: file:line), as a whole-file refusal would stop jobs GitHub runs."""
    return Job(**_ordering(c, jid, spec, jobs), unsupported=why)


def _ordering(c: _Ctx, jid: str, spec: LineDict, jobs: LineDict) -> dict[str, Any]:
    """What every job has, runnable or not: its id, line, name, ``needs``, ``if`` and ``runs-on``."""
    return {
        "id": jid,
        "line": jobs.line_of(jid),
        "name": spec.get("name"),
        "needs": c.strings(spec.get("needs", []), f"job {jid!r}: 'needs'", spec, "needs"),
        "if_": spec.get("if"),
        "runs_on": spec.get("runs-on"),
    }


def parse_step(c: _Ctx, jid: str, i: int, spec: Any, job: LineDict) -> Step:
    where = f"job {jid!r} step {i + 1}"
    if not isinstance(spec, LineDict):
        raise c.fail(f"{where} must be a mapping", job, "steps")
    unknown = sorted(set(spec) - STEP_KEYS)
    if unknown:
        raise c.fail(f"{where}: unknown key {unknown[0]!r}", spec, unknown[0])
    if ("run" in spec) == ("uses" in spec):
        raise c.fail(f"{where}: a step needs exactly one of 'run' or 'uses'", spec)
    if "run" in spec and not isinstance(spec["run"], str | int | float):
        raise c.fail(f"{where}: 'run' must be a string", spec, "run")
    if "uses" in spec and not isinstance(spec["uses"], str):
        raise c.fail(f"{where}: 'uses' must be a string", spec, "uses")
    if "with" in spec and "run" in spec:
        raise c.fail(f"{where}: 'with' belongs to 'uses' steps", spec, "with")
    sid = spec.get("id")
    if sid is not None and not JOB_ID.match(str(sid)):
        raise c.fail(f"{where}: invalid step id {sid!r}", spec, "id")
    return Step(
        index=i,
        line=spec.line,
        id=str(sid) if sid is not None else None,
        name=str(spec["name"]) if spec.get("name") is not None else None,
        if_=spec.get("if"),
        run=str(spec["run"]) if "run" in spec else None,
        uses=spec.get("uses"),
        with_=dict(c.mapping(spec.get("with"), f"{where}: 'with'", spec, "with")),
        env=dict(c.mapping(spec.get("env"), f"{where}: 'env'", spec, "env")),
        shell=spec.get("shell"),
        working_directory=spec.get("working-directory"),
        continue_on_error=spec.get("continue-on-error", False),
        timeout_minutes=spec.get("timeout-minutes"),
    )


def check_needs(c: _Ctx, jobs: dict[str, Job], node: LineDict) -> None:
    for job in jobs.values():
        for need in job.needs:
            if need not in jobs:
                raise c.fail(f"job {job.id!r} needs {need!r}, which is not a job of this workflow", node, job.id)
    state: dict[str, int] = {}

    def visit(jid: str, path: list[str]) -> None:
        if state.get(jid) == 2:
            return
        if state.get(jid) == 1:
            cycle = [*path[path.index(jid) :], jid]
            raise c.fail(f"jobs depend on each other in a cycle: {' -> '.join(cycle)}", node, jid)
        state[jid] = 1
        for need in jobs[jid].needs:
            visit(need, [*path, jid])
        state[jid] = 2

    for jid in jobs:
        visit(jid, [])
