"""Job logs on the agent's disk are the job's business only: directories 0700, files 0600, created with that
mode (never created with the umask's and tightened afterwards, which leaves a window to open them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter (missing parents are made as usual)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        os.chmod(path, 0o700)  # an older agent's: tightened before anything new goes in
    return path


def open_private(path: Path, mode: str = "ab", **kwargs: Any) -> IO[Any]:
    """Open ``path`` for writing (``"ab"``, ``"a"``, ``"wb"``, ``"w"``), creating it 0600 if it is new."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise
