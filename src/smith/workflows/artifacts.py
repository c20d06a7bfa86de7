"""actions/upload-artifact and actions/download-artifact, natively: artifacts of a run are directories on the
host (``RunInfo.artifacts``), copied out of and into the job's work dir. This needs a backend whose work dir
the host can read (the sandbox); on a VM the step fails saying so."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from smith.workflows.errors import WorkflowError
from smith.workflows.expressions import interpolate_tree, to_str
from smith.workflows.model import Step

if TYPE_CHECKING:
    from smith.workflows.runner import Frame, JobRunner

UPLOAD = "actions/upload-artifact"
DOWNLOAD = "actions/download-artifact"


def _inputs(runner: JobRunner, frame: Frame, step: Step) -> dict[str, str]:
    scope = runner.scope(frame)
    return {str(k).lower(): to_str(interpolate_tree(v, scope)) for k, v in step.with_.items()}


def _host_path(runner: JobRunner, step: Step, path: str) -> Path:
    """A guest path (absolute, or relative to the workspace) as the host sees it."""
    work = runner.session.host_workdir
    if work is None:
        raise WorkflowError(f"step {step.display!r}: {step.uses} needs a backend whose work dir the host reads")
    path = path.replace("~", runner.session.workdir, 1) if path.startswith("~") else path
    if path.startswith("/"):
        if not (path == runner.session.workdir or path.startswith(runner.session.workdir + "/")):
            raise WorkflowError(f"step {step.display!r}: {path} is outside the job's work dir")
        return work / os.path.relpath(path, runner.session.workdir)
    return work / runner.info.repo_name / path


def _root_of(pattern: Path) -> Path:
    """The part of a pattern before its first wildcard: what GitHub keeps the artifact's paths relative to."""
    parts: list[str] = []
    for part in pattern.parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path("/")


def _copy_matches(include: list[Path], excluded: list[Path], target: Path, overwrite: bool) -> tuple[int, int] | None:
    """Copy what the patterns match into ``target``, relative to their common root: (files, bytes); None when
    the artifact exists and may not be overwritten."""
    exclude = {Path(m) for p in excluded for m in glob.glob(str(p), recursive=True)}
    files: list[Path] = []
    for pattern in include:
        for match in sorted(glob.glob(str(pattern), recursive=True)):
            m = Path(match)
            candidates = [m] if m.is_file() else [f for f in sorted(m.rglob("*")) if f.is_file()]
            files += [f for f in candidates if f not in exclude and not (set(f.parents) & exclude)]
    if not files:
        return 0, 0
    if target.exists():
        if not overwrite:
            return None
        shutil.rmtree(target)
    roots = [_root_of(p) if any(c in str(p) for c in "*?[") else p for p in include]
    root = Path(os.path.commonpath([str(r if r.is_dir() else r.parent) for r in roots]))
    size = 0
    for f in files:
        dest = target / f.relative_to(root) if f.is_relative_to(root) else target / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
        size += f.stat().st_size
    return len(files), size


async def upload(runner: JobRunner, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
    given = _inputs(runner, frame, step)
    name = given.get("name") or "artifact"
    store = runner.info.artifacts
    if store is None:
        raise WorkflowError(f"step {step.display!r}: no artifact store for this run")
    lines = [p.strip() for p in given.get("path", "").splitlines() if p.strip()]
    if not lines:
        raise WorkflowError(f"step {step.display!r}: input 'path' of {step.uses} is required")
    include = [_host_path(runner, step, p) for p in lines if not p.startswith("!")]
    excluded = [_host_path(runner, step, p[1:]) for p in lines if p.startswith("!")]
    target = store / name
    overwrite = given.get("overwrite", "false") == "true"
    copied = await asyncio.to_thread(_copy_matches, include, excluded, target, overwrite)
    if copied is None:
        raise WorkflowError(f"step {step.display!r}: an artifact named {name!r} already exists in this run")
    if not copied[0]:
        policy = given.get("if-no-files-found", "warn")
        message = f"No files were found with the provided path: {', '.join(lines)}. No artifacts will be uploaded."
        if policy == "error":
            raise WorkflowError(f"step {step.display!r}: {message}")
        if policy == "warn":
            runner.reporter.line(runner.key, "annotation", f"Warning: {message}")
        return True, {}
    files, size = copied
    runner.reporter.line(runner.key, "line", f"Artifact {name} uploaded: {files} files, {size} bytes")
    return True, {"artifact-id": name, "artifact-url": str(target)}


async def download(runner: JobRunner, frame: Frame, step: Step) -> tuple[bool, dict[str, str]]:
    given = _inputs(runner, frame, step)
    store = runner.info.artifacts
    if store is None or runner.session.host_workdir is None:
        raise WorkflowError(f"step {step.display!r}: {step.uses} needs a backend whose work dir the host reads")
    dest = _host_path(runner, step, given.get("path") or ".")
    guest_dest = str(dest.relative_to(runner.session.host_workdir)) if dest != runner.session.host_workdir else "."
    name = given.get("name")
    if name:
        if not (store / name).is_dir():
            raise WorkflowError(f"step {step.display!r}: no artifact named {name!r} in this run")
        chosen = [name]
    else:
        pattern = given.get("pattern") or "*"
        chosen = sorted(p.name for p in store.glob(pattern) if p.is_dir())
    merge = bool(name) or given.get("merge-multiple", "false") == "true"
    for each in chosen:
        await runner.session.upload(store / each, guest_dest if merge else f"{guest_dest}/{each}")
        runner.reporter.line(runner.key, "line", f"Artifact {each} downloaded")
    return True, {"download-path": f"{runner.session.workdir}/{guest_dest}"}
