"""Sticky disks: named, per-repository disks a job asks for, mounted at a path, kept between jobs.

A job asks with a ``runs-on`` label ``sticky:<name>:<path>[:<size>]``, e.g. ``sticky:docker:/var/lib/docker:20G``
(the size, default 10G, is the filesystem's; the disk is sparse and costs what is written). The label is not
a runner-class label: runner-class matching ignores it. GitHub hands the job to the JIT runner registered
with the job's labels, so the label reaches the runner too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "sticky:"
DEFAULT_MIB = 10240
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
_UNITS = {"m": 1, "g": 1024, "t": 1024 * 1024}
MAX_DISKS = 4


class StickyLabelError(ValueError):
    pass


@dataclass(frozen=True)
class StickyRequest:
    name: str
    path: str
    size_mib: int = DEFAULT_MIB


def is_sticky(label: str) -> bool:
    return label.lower().startswith(PREFIX)


def requests(labels: Iterable[str]) -> list[StickyRequest]:
    """The sticky disks a job's labels ask for (StickyLabelError for a malformed one)."""
    found: dict[str, StickyRequest] = {}
    for label in labels:
        if not is_sticky(label):
            continue
        parts = label[len(PREFIX) :].split(":")
        if len(parts) not in (2, 3):
            raise StickyLabelError(f"{label!r}: write sticky:<name>:<path>[:<size>]")
        name, path = parts[0], parts[1]
        if not NAME.match(name):
            raise StickyLabelError(f"{label!r}: a disk name is letters, digits, '.', '_' or '-'")
        if not PATH.match(path) or ".." in path.split("/") or path.rstrip("/") in ("", "/proc", "/sys", "/dev"):
            raise StickyLabelError(f"{label!r}: the mount path must be absolute, plain (letters, digits, ._-/)")
        size = DEFAULT_MIB
        if len(parts) == 3:
            match = re.fullmatch(r"(\d+)([mgt])", parts[2].lower())
            if not match or int(match.group(1)) == 0:
                raise StickyLabelError(f"{label!r}: a size is like 512M or 20G")
            size = int(match.group(1)) * _UNITS[match.group(2)]
        found[name] = StickyRequest(name, path.rstrip("/") or "/", size)
    if len(found) > MAX_DISKS:
        raise StickyLabelError(f"at most {MAX_DISKS} sticky disks per job")
    return list(found.values())


@dataclass(frozen=True)
class StickyPlan:
    """The sticky disks one job's VM boots with, and whose they are."""

    org: str
    repo: str
    disks: tuple[StickyRequest, ...]
