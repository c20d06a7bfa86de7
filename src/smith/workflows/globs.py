"""GitHub's filter patterns (branches, tags, paths): ``*`` any characters but ``/``, ``**`` any
characters, ``?`` zero or one of the preceding character, ``+`` one or more of it, ``[...]`` a class, and a
leading ``!`` that negates a pattern. In a list, patterns apply in order: a later one overrides an earlier one."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c in "?+" and out:
            out.append(c)
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matches(value: str, patterns: Iterable[str]) -> bool:
    """Does ``value`` pass the ordered pattern list (``!`` patterns exclude what earlier ones included)?"""
    result = False
    for p in patterns:
        if p.startswith("!"):
            if result and compile_glob(p[1:]).match(value):
                result = False
        elif not result and compile_glob(p).match(value):
            result = True
    return result
