"""A repository configured for built-in execution, read with git: a local path or a clone URL.

The control plane reads a commit's workflow files from it (``workflow_files``) and makes a pull request's merge
commit in a scratch clone (``merge_commit``); the host agent checks the commit out for a job (``checkout``,
making the same merge commit again). All only run git; nothing here writes to the source."""

from __future__ import annotations

import contextlib
import contextvars
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smith.adapters.childenv import minimal_env
from smith.workflows.errors import WorkflowError
from smith.workflows.local import changed_paths

FOLDER = ".github/workflows"


# A pull request's merge commit is made with these, so every machine that makes it gets the same sha.
MERGER = {
    "GIT_AUTHOR_NAME": "GitHub",
    "GIT_AUTHOR_EMAIL": "noreply@github.com",
    "GIT_COMMITTER_NAME": "GitHub",
    "GIT_COMMITTER_EMAIL": "noreply@github.com",
}


class MergeConflict(WorkflowError):
    """The pull request's head does not merge cleanly into its base."""


# Set (in the calling task: ``asyncio.to_thread`` carries it into the thread) to an event that, once set, kills
# the git command running and fails the call: a control plane stopping does not wait for a clone that hangs.
ABORT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("smith_git_abort", default=None)
# Set (the same way) to the seconds one git command may take before it is killed and the call fails: the control
# plane sets its SMITH_WORKFLOW_GIT_TIMEOUT_SECONDS, so a source that accepts the connection and never answers
# frees its trigger worker slot then; the agent's checkout keeps this default.
TIMEOUT: contextvars.ContextVar[float] = contextvars.ContextVar("smith_git_timeout", default=300.0)
# An http(s) transfer (also one waiting for the server's first byte) slower than this many bytes a second for
# LOW_SPEED_SECONDS, or for half the timeout if that is shorter, is given up by git itself (its http.lowSpeedLimit /
# http.lowSpeedTime), before the timeout kills it and with git's own reason; other transports ignore these.
LOW_SPEED_BYTES = 1000
LOW_SPEED_SECONDS = 30


def _limits(timeout: float) -> list[str]:
    """The ``-c`` options that make git give up on a stalled http(s) transfer within half of ``timeout``."""
    seconds = max(1, min(LOW_SPEED_SECONDS, int(timeout / 2)))
    return ["-c", f"http.lowSpeedLimit={LOW_SPEED_BYTES}", "-c", f"http.lowSpeedTime={seconds}"]


def _run(argv: list[str], cwd: Path | None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a git command (``argv``: ``git`` and its arguments); killed when
    ``ABORT``'s event is set or after ``TIMEOUT``'s seconds."""
    abort = ABORT.get()
    timeout = TIMEOUT.get()
    try:
        proc = subprocess.Popen(
            [argv[0], *_limits(timeout), *argv[1:]],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=minimal_env(**(env or {})),
        )
    except OSError as exc:
        raise WorkflowError(f"git {argv[1]} failed: {exc}") from exc
    deadline = time.monotonic() + timeout
    with proc:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2 if abort is not None else timeout)
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                if (abort is not None and abort.is_set()) or time.monotonic() >= deadline:
                    proc.kill()
                    proc.communicate()
                    why = "stopped" if abort is not None and abort.is_set() else f"timed out after {timeout:.0f} s"
                    raise WorkflowError(f"git {argv[1]} {why}") from None


def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    code, out, err = _run(["git", *args], cwd, env)
    if code != 0:
        raise WorkflowError(f"git {' '.join(args[:2])} failed: {err.strip()[-500:]}")
    return out


@contextlib.contextmanager
def local_copy(source: str, scratch: bool = False) -> Iterator[Path]:
    """A git directory holding the source's commits: the source itself when it is a local directory (unless
    ``scratch``: a clone sharing its objects, for writing new ones), else a bare clone made for the call (removed
    after)."""
    if Path(source).is_dir() and not scratch:
        yield Path(source)
        return
    tmp = Path(tempfile.mkdtemp(prefix="smith-src-"))
    try:
        shared = ["--shared"] if Path(source).is_dir() else []
        _git("clone", "--bare", "-q", *shared, source, str(tmp / "repo.git"))
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


def merge_commit(repo: Path, base: str, head: str, when: int) -> str:
    """A pull request's merge commit, as GitHub tests it (``refs/pull/N/merge``): ``head`` merged into ``base``.
    Made with a fixed identity, date (``when``, Unix time) and message, so the control plane and every agent
    make the same commit (the same sha) from the same two parents. Writes objects into ``repo``; raises
    ``MergeConflict`` when the two do not merge cleanly."""
    code, out, err = _run(["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", base, head], repo)
    if code == 1:
        files = [line for line in out.splitlines()[1:] if line]
        raise MergeConflict(f"merge conflict in {', '.join(files[:5]) or 'the pull request'}")
    if code != 0:
        raise WorkflowError(f"git merge-tree failed: {err.strip()[-500:]}")
    tree = out.split()[0]
    date = f"{when} +0000"
    env = {**MERGER, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    message = f"Merge {head} into {base}"
    return _git("commit-tree", tree, "-p", base, "-p", head, "-m", message, cwd=repo, env=env).strip()


def fetch_missing(repo: Path, sha: str, source: str, ref: str) -> None:
    """Make sure ``repo`` has commit ``sha``: if not, fetch ``ref`` from ``source`` (a pull request's head from a
    fork is only under ``refs/pull/N/head`` in the base repository, which a clone does not copy)."""
    if _has(repo, sha):
        return
    _git("fetch", "-q", source, ref, cwd=repo)
    if not _has(repo, sha):
        raise WorkflowError(f"commit {sha[:12]} is neither in the source nor at its {ref}")


def _has(repo: Path, sha: str) -> bool:
    try:
        _git("cat-file", "-e", f"{sha}^{{commit}}", cwd=repo)
    except WorkflowError:
        return False
    return True


def checkout(source: str, sha: str, dest: Path, merge: tuple[str, str, int] | None = None, pull: str = "") -> Path:
    """The source's commit ``sha`` checked out at ``dest`` (a new directory). With ``merge`` (base, head, time),
    ``sha`` is a pull request's merge commit: made here again from its parents (``merge_commit``), the head
    fetched from ``pull`` (``refs/pull/N/head``) when the clone lacks it."""
    _git("clone", "-q", "--no-checkout", source, str(dest))
    if merge is not None:
        if pull:
            fetch_missing(dest, merge[1], "origin", pull)
        made = merge_commit(dest, *merge)
        if made != sha:
            raise WorkflowError(f"the merge commit made here ({made[:12]}) is not the run's ({sha[:12]})")
    _git("-c", "advice.detachedHead=false", "checkout", "-q", sha, cwd=dest)
    return dest


def read_event(
    source: str, event: str, payload: dict[str, Any], sha: str, merge_time: int | None
) -> tuple[str, dict[str, str], list[str] | None, dict[str, str]]:
    """For a run of ``event`` at ``sha``: the commit it runs (a pull request's merge commit, made in a
    scratch clone), its workflow files, the paths the event changed, and the run fields saying how the merge was
    made (none without one)."""
    with local_copy(source, scratch=merge_time is not None) as git:
        extra: dict[str, str] = {}
        if merge_time is not None:
            base = payload.get("pull_request", {}).get("base", {})
            parent = str(base.get("sha") or "") or resolve(git, f"refs/heads/{base.get('ref')}")
            fetch_missing(git, sha, source, pull_head(payload))
            merged = merge_commit(git, parent, sha, merge_time)
            extra = {"merge_base": parent, "merge_head": sha, "merge_time": str(merge_time)}
            sha = merged
        return sha, workflow_files(git, sha), changed_paths(git, event, payload), extra


def pull_head(payload: dict[str, Any]) -> str:
    """Where the base repository keeps a pull request's head (also a fork's): ``refs/pull/N/head``."""
    return f"refs/pull/{payload.get('number') or (payload.get('pull_request') or {}).get('number')}/head"
