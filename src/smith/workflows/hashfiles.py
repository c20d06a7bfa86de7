"""``hashFiles(...)`` as GitHub's runner computes it: its patterns go to ``@actions/glob`` (one per line, ``#``
comments, leading ``!`` negates, later patterns override earlier ones, a pattern naming a directory takes
everything under it), the matching files are read in the glob's walk order (each search path in pattern order,
depth first, a directory's entries in byte order), and the result is the SHA-256 over each file's SHA-256 ('' when
nothing matched). Only files under the workspace count; ``.`` and ``..`` segments are refused; a first argument
``--follow-symbolic-links`` follows symbolic links (by default a link to a directory is not descended)."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smith.workflows.errors import ExpressionError

FOLLOW = "--follow-symbolic-links"


@dataclass(frozen=True)
class Pattern:
    negate: bool
    segments: tuple[str, ...]  # absolute: the first is "" (the root)

    @property
    def search_path(self) -> str:
        literal: list[str] = []
        for seg in self.segments:
            if _magic(seg):
                break
            literal.append(_unescape(seg))
        return "/".join(literal) or "/"


def hash_files(workspace: Path | None, args: list[str], guest_workspace: str = "") -> str:
    """The hash of the files the patterns select under ``workspace`` (the host's copy of the workspace;
    absolute patterns may name it by its path in the guest, ``guest_workspace``)."""
    if workspace is None:
        return ""
    follow = False
    if args and args[0].startswith("--"):
        if args[0].lower() != FOLLOW:
            raise ExpressionError(f"hashFiles: invalid glob option {args[0]!r}; the only one is '{FOLLOW}'")
        follow, args = True, args[1:]
    root = os.path.realpath(workspace)
    patterns = parse_patterns("\n".join(args), root, guest_workspace)
    outer = hashlib.sha256()
    found = False
    for path in walk(patterns, root, follow):
        try:
            if os.path.isdir(path):
                continue
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ExpressionError(f"hashFiles: cannot read {os.path.relpath(path, root)}: {exc.strerror}") from None
        outer.update(hashlib.sha256(data).digest())
        found = True
    return outer.hexdigest() if found else ""


def parse_patterns(text: str, root: str, guest_root: str = "") -> list[Pattern]:
    out: list[Pattern] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = False
        while line.startswith("!"):
            negate, line = not negate, line[1:].strip()
        if not line:
            continue
        parts = line.split("/")
        if any(p == ".." or (p == "." and i > 0) for i, p in enumerate(parts)):
            raise ExpressionError(f"hashFiles: invalid pattern {line!r}: '.' and '..' are not allowed")
        if guest_root and (line == guest_root or line.startswith(guest_root.rstrip("/") + "/")):
            line = escape(root) + line[len(guest_root.rstrip("/")) :]
        elif line == "." or line.startswith("./"):
            line = escape(root) + line[1:]
        elif not line.startswith("/"):
            line = f"{escape(root)}/{line}"
        directory_only = line.endswith("/")
        segments = tuple(s for i, s in enumerate(line.rstrip("/").split("/")) if s or i == 0)
        out.append(Pattern(negate, segments))
        if directory_only or segments[-1] != "**":  # a directory stands for everything under it
            out.append(Pattern(negate, (*segments, "**")))
    return out


def escape(path: str) -> str:
    """A literal path inside a pattern (the workspace may hold ``[``, ``*``, ``?``)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", path)


def walk(patterns: list[Pattern], root: str, follow: bool) -> Iterator[str]:
    """Matching paths in ``@actions/glob``'s order, limited to the workspace ``root``."""
    included = [p for p in patterns if not p.negate]
    starts: list[str] = []
    for path in search_paths(included):
        if _under(root, path):
            path = root  # files outside the workspace never count
        elif not _under(path, root):
            continue
        if path not in starts:
            starts.append(path)
    for start in starts:
        yield from _descend(patterns, included, start, follow, [])


def search_paths(included: list[Pattern]) -> list[str]:
    """Where the walk starts: each pattern's literal prefix, in pattern order, minus those under another."""
    candidates = {p.search_path for p in included}
    out: list[str] = []
    for p in included:
        path = p.search_path
        if path in out or any(a in candidates for a in _ancestors(path)):
            continue
        out.append(path)
    return out


def _ancestors(path: str) -> Iterator[str]:
    while path not in ("/", ""):
        path = os.path.dirname(path)
        yield path


def _descend(
    patterns: list[Pattern], included: list[Pattern], path: str, follow: bool, chain: list[str]
) -> Iterator[str]:
    parts = tuple(path.split("/")) if path != "/" else ("",)
    matched = _match(patterns, parts)
    if not matched and not any(_partial(p.segments, parts) for p in included):
        return
    try:
        mode = (os.stat(path) if follow else os.lstat(path)).st_mode
    except FileNotFoundError:
        return  # a broken link (followed), or a file gone meanwhile
    if not stat.S_ISDIR(mode):
        if matched:
            yield path
        return
    if follow:
        real = os.path.realpath(path)
        if real in chain:
            return  # a cycle of links
        chain = [*chain, real]
    try:
        names = sorted(os.listdir(path), key=os.fsencode)
    except OSError:
        return
    for name in names:
        yield from _descend(patterns, included, f"{path.rstrip('/')}/{name}", follow, chain)


def _under(path: str, ancestor: str) -> bool:
    return path == ancestor or ancestor == "/" or path.startswith(ancestor.rstrip("/") + "/")


def _match(patterns: list[Pattern], parts: tuple[str, ...]) -> bool:
    result = False
    for p in patterns:
        if _full(p.segments, parts):
            result = not p.negate
    return result


def _full(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_full(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and _segment(pat[0]).fullmatch(parts[0]) is not None and _full(pat[1:], parts[1:])


def _partial(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Could something under ``parts`` match ``pat``?"""
    if not parts:
        return True
    if not pat:
        return False
    if pat[0] == "**":
        return True
    return _segment(pat[0]).fullmatch(parts[0]) is not None and _partial(pat[1:], parts[1:])


def _magic(seg: str) -> bool:
    plain = re.sub(r"\\.", "", seg)
    return "*" in plain or "?" in plain or re.search(r"\[[^/]+\]", plain) is not None


def _unescape(seg: str) -> str:
    return re.sub(r"\\(.)", r"\1", seg)


_PIECE = re.compile(r"\\(.)|(\*)|(\?)|\[([!^]?)([^\]/]+)\]|(.)", re.S)


def _piece(m: re.Match[str]) -> str:
    escaped, star, question, negated, chars, literal = m.groups()
    if escaped is not None:
        return re.escape(escaped)
    if star:
        return "[^/]*"
    if question:
        return "[^/]"
    if chars is not None:
        return "[" + ("^" if negated else "") + chars.replace("\\", "\\\\").replace("[", "\\[") + "]"
    return re.escape(literal)


@functools.lru_cache(maxsize=512)
def _segment(seg: str) -> re.Pattern[str]:
    """One path segment of a minimatch pattern (``dot``, no braces, no extglobs) as a regular expression."""
    return re.compile(_PIECE.sub(_piece, seg))
