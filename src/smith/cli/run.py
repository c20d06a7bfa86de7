"""``smith run``: run a local repository's workflow on this machine, like ``act``, with no services running."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer

from smith.cli import errors
from smith.workflows.errors import WorkflowError


def register(root: typer.Typer) -> None:
    root.command("run")(run)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise WorkflowError(f"--{what} takes KEY=VALUE, not {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def run(
    repo_dir: Path = typer.Argument(Path("."), help="The repository (default: the current directory)"),
    workflow: Path | None = typer.Option(
        None, "--workflow", "-W", help="The workflow file (default: every .github/workflows file the event triggers)"
    ),
    event: str = typer.Option("push", "--event", "-e", help="The event name: push, pull_request, workflow_dispatch..."),
    eventpath: Path | None = typer.Option(None, "--eventpath", help="A JSON file with the event's payload"),
    job: str | None = typer.Option(None, "--job", "-j", help="Run only this job (and the jobs it needs)"),
    matrix: list[str] = typer.Option([], "--matrix", help="Run only matrix combinations with k=v (repeatable)"),
    secret: list[str] = typer.Option([], "--secret", "-s", help="A secret K=V (repeatable); masked in all output"),
    var: list[str] = typer.Option([], "--var", help="A configuration variable K=V (repeatable)"),
    input_: list[str] = typer.Option([], "--input", help="A workflow_dispatch input K=V (repeatable)"),
    backend: str = typer.Option("auto", "--backend", help="auto | sandbox | qemu | firecracker"),
    parallel: int = typer.Option(2, "--parallel", min=1, help="Jobs running at once"),
    memory_mib: int = typer.Option(8192, "--memory-mib", min=256, help="Memory per job"),
    network: bool = typer.Option(True, "--network/--no-network", help="Sandbox: share the host's network"),
    action_mirror: Path | None = typer.Option(
        None,
        "--action-mirror",
        help="A directory of owner/repo@ref checkouts for remote actions [env SMITH_ACTION_MIRROR]",
    ),
    cache_url: str | None = typer.Option(None, "--cache-url", help="A Smith cache server for actions/cache"),
    cache_token: str | None = typer.Option(
        None, "--cache-token", help="Its token (`smith cache token`) [env SMITH_CACHE_TOKEN]"
    ),
    artifact_path: Path | None = typer.Option(
        None, "--artifact-path", help="Keep upload-artifact's artifacts here (default: a temporary directory)"
    ),
    list_jobs: bool = typer.Option(False, "--list", "-l", help="List the workflows' jobs in needs order; run nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (live output goes to stderr)"),
) -> None:
    """Run a workflow of a local repository in fresh sandboxes or VMs. Exit 0: every job succeeded; 1: a job
    failed; 2: an invalid workflow or command line."""
    from smith.logging import configure
    from smith.workflows.local import find_workflows, read_event, run_info, selected

    configure("ERROR", json=False)  # service log lines (the sandbox's isolation notice) stay out of the output
    from smith.cli.settings import ClientSettings
    from smith.workflows.llm import LLM

    settings = ClientSettings()
    action_mirror = action_mirror or settings.action_mirror
    llm = LLM(settings.llm_url, settings.llm_model, settings.llm_enabled) if settings.llm_url else None

    if backend not in ("auto", "sandbox", "qemu", "firecracker"):
        errors.say(f"--backend must be auto, sandbox, qemu or firecracker, not {backend!r}")
        raise typer.Exit(errors.USAGE)
    try:
        repo = repo_dir.resolve()
        if not repo.is_dir():
            raise WorkflowError(f"{repo_dir} is not a directory")
        payload = read_event(eventpath)
        files = find_workflows(repo, workflow)
        workflows = selected(files, repo, event, payload, workflow is not None)
        if not workflows:
            raise WorkflowError(f"no workflow in {repo / '.github/workflows'} runs on {event}")
        infos = [
            run_info(
                repo,
                wf,
                event,
                payload,
                secrets=_pairs(secret, "secret"),
                vars_=_pairs(var, "var"),
                inputs=_pairs(input_, "input"),
                action_mirror=action_mirror.resolve() if action_mirror else None,
            )
            for wf in workflows
        ]
        matrix_filter = _pairs(matrix, "matrix")
        cache = _cache_access(cache_url or settings.cache_url, cache_token or settings.cache_token)
        for info in infos:
            info.llm = llm
            info.cache = cache is not None
    except WorkflowError as exc:
        errors.say(exc.message)
        raise typer.Exit(errors.USAGE) from None
    if list_jobs:
        _list(workflows, as_json)
        return
    root = artifact_path.resolve() if artifact_path else Path(tempfile.mkdtemp(prefix="smith-artifacts-"))
    for info in infos:
        info.artifacts = root / str(info.run_id) if len(infos) > 1 else root
        info.artifacts.mkdir(parents=True, exist_ok=True)
    try:
        code = asyncio.run(
            _run_all(workflows, infos, backend, parallel, memory_mib, network, job, matrix_filter, as_json, cache)
        )
    finally:
        if artifact_path is None:
            shutil.rmtree(root, ignore_errors=True)
    raise typer.Exit(code)


async def _run_all(
    workflows: list[Any],
    infos: list[Any],
    backend: str,
    parallel: int,
    memory_mib: int,
    network: bool,
    job: str | None,
    matrix_filter: dict[str, str],
    as_json: bool,
    cache: Any = None,
) -> int:
    from smith.domain.vms import VMShape
    from smith.workflows.executor import Executor
    from smith.workflows.machines import vm_sessions
    from smith.workflows.report import ConsoleReporter, summary_table

    out = sys.stderr if as_json else sys.stdout
    reporter = ConsoleReporter(out)
    results = []
    with tempfile.TemporaryDirectory(prefix="smith-run-") as tmp:
        vmm = _vmm(backend, Path(tmp), network)
        shape = VMShape("workflow", max(1, (os.cpu_count() or 2) // parallel), memory_mib)
        code = 0
        for wf, info in zip(workflows, infos, strict=True):
            try:
                ex = Executor(
                    info,
                    wf,
                    vm_sessions(vmm, shape, cache),
                    reporter,
                    capacity=parallel,
                    only_job=job,
                    matrix_filter=matrix_filter,
                )
            except WorkflowError as exc:
                errors.say(exc.message)
                return errors.USAGE
            result = await ex.run()
            results.append(result)
            out.write(summary_table(result) + "\n")
            if result.conclusion != "success":
                code = 1
    if as_json:
        sys.stdout.write(
            json.dumps(
                [
                    {
                        "workflow": r.workflow,
                        "conclusion": r.conclusion,
                        "seconds": round(r.seconds, 3),
                        "jobs": [
                            {
                                "job": j.key,
                                "id": j.job_id,
                                "result": j.result,
                                "outputs": j.outputs,
                                "seconds": round(j.seconds, 3),
                                "steps": [
                                    {"name": s[0], "conclusion": s[1], "seconds": round(s[2], 3)} for s in j.steps
                                ],
                                "error": j.error,
                            }
                            for j in r.jobs
                        ],
                    }
                    for r in results
                ],
                indent=2,
            )
            + "\n"
        )
    return code


def _list(workflows: list[Any], as_json: bool) -> None:
    rows = [
        {"workflow": wf.file, "stage": n, "job": jid, "name": wf.jobs[jid].name or jid, "needs": wf.jobs[jid].needs}
        for wf in workflows
        for n, stage in enumerate(wf.stages())
        for jid in stage
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    width = max(len(r["job"]) for r in rows)
    for r in rows:
        needs = f"  needs {', '.join(r['needs'])}" if r["needs"] else ""
        sys.stdout.write(f"{r['workflow']}  stage {r['stage']}  {r['job'].ljust(width)}  {r['name']}{needs}\n")


def _cache_access(url: str | None, token: Any) -> Any:
    """The cache server the jobs' actions/cache steps use, when both its URL and a token are given."""
    from smith.wire.agent import ServiceAccess

    secret = token.get_secret_value() if hasattr(token, "get_secret_value") else token
    if not url or not secret:
        return None
    return ServiceAccess(url=url, token=secret)


def _vmm(backend: str, work: Path, network: bool) -> Any:
    from smith.agent import backends
    from smith.agent.settings import AgentSettings

    name = backend if backend != "auto" else backends.probe(None)["auto"]
    if name == "sandbox":
        from smith.adapters.sandbox import SandboxVMM

        launcher, why = backends.sandbox_launcher()
        if launcher is None:
            raise WorkflowError(f"the sandbox backend is not available here: {why}")
        return SandboxVMM(work / "sandbox", launcher=launcher, network="host" if network else "none")
    settings = AgentSettings(agent_backend=name, agent_work_dir=work)
    vmm, _ = backends.select_backend(settings)
    return vmm
