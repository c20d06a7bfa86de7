"""A repository configured for built-in execution, read with git: a local path or a clone URL.

The control plane reads a commit's workflow files from it (``workflow_files``); the host agent checks the
commit out for a job (``checkout``). Both only run git; nothing here writes to the source."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from smith.adapters.childenv import minimal_env
from smith.workflows.errors import WorkflowError

FOLDER = ".github/workflows"


def _git(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=minimal_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkflowError(f"git {args[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise WorkflowError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


@contextlib.contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A git directory holding the source's commits: the source itself when it is a local directory, else a
    bare clone made for the call (removed after)."""
    if Path(source).is_dir():
        yield Path(source)
        return
    tmp = Path(tempfile.mkdtemp(prefix="smith-src-"))
    try:
        _git("clone", "--bare", "-q", source, str(tmp / "repo.git"))
        yield tmp / "repo.git"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(repo: Path, ref: str) -> str:
    """The commit a ref (branch, tag, sha) names in a local git directory."""
    return _git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", cwd=repo).strip()


def workflow_files(repo: Path, sha: str) -> dict[str, str]:
    """``.github/workflows/*.yml|yaml`` at a commit: path -> text."""
    names = _git("ls-tree", "--name-only", f"{sha}:{FOLDER}", cwd=repo).split() if _has_folder(repo, sha) else []
    out: dict[str, str] = {}
    for name in sorted(names):
        if name.endswith((".yml", ".yaml")):
            out[f"{FOLDER}/{name}"] = _git("show", f"{sha}:{FOLDER}/{name}", cwd=repo)
    return out


def _has_folder(repo: Path, sha: str) -> bool:
    try:
        _git("rev-parse", "--verify", "-q", f"{sha}:{FOLDER}", cwd=repo)
    except WorkflowError:
        return False
    return True


def checkout(source: str, sha: str, dest: Path) -> Path:
    """The source's commit ``sha`` checked out at ``dest`` (a new directory)."""
    _git("clone", "-q", "--no-checkout", source, str(dest))
    _git("-c", "advice.detachedHead=false", "checkout", "-q", sha, cwd=dest)
    return dest
