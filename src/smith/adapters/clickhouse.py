"""What both ClickHouse adapters share: dialects, literals, and error mapping.

Two dialects: ``modern`` (ClickHouse 20.3 and later, chdb) has table TTLs, data-skipping indexes and
LowCardinality; ``legacy`` is for old servers such as Debian's 18.16, which have none of those. Queries are
built with ``literal()`` rather than server-side parameters, because 18.16 has no query parameters.
"""

from __future__ import annotations

import re

from smith.errors import SmithError, Unavailable, UpstreamError

MODERN = "modern"
LEGACY = "legacy"
DIALECTS = (MODERN, LEGACY)

# Server error codes that mean "try again later" rather than "this query is wrong".
_RETRYABLE_CODES = {
    159,  # TIMEOUT_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    252,  # TOO_MANY_PARTS
    999,  # KEEPER_EXCEPTION
}
_CODE = re.compile(r"Code:\s*(\d+)")


def dialect_for_version(version: str) -> str:
    """``legacy`` below 20.3 (no TTL, skip indexes or LowCardinality by default), else ``modern``."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return LEGACY if (parts[0], parts[1]) < (20, 3) else MODERN


def literal(value: str | int | float | bool) -> str:
    """A ClickHouse literal for ``value``: strings quoted with every special character escaped."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return repr(float(value))
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def like_contains(text: str) -> str:
    """A LIKE pattern literal matching ``text`` anywhere (``%``, ``_`` and ``\\`` in it match themselves)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return literal(f"%{escaped}%")


def identifier(name: str) -> str:
    """A database/table name, refused unless it is a plain identifier (it is spliced into SQL)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ValueError(f"{name!r} is not a plain identifier (letters, digits, underscore)")
    return name


def query_error(message: str, *, status: int | None = None) -> SmithError:
    """Our error for a failed query: ``Unavailable`` when retrying can help, else ``UpstreamError``."""
    short = message.strip().splitlines()[0][:500] if message.strip() else f"HTTP {status}"
    m = _CODE.search(message)
    if (m and int(m.group(1)) in _RETRYABLE_CODES) or status in (502, 503, 504):
        return Unavailable(f"ClickHouse is busy: {short}", retry_after=1.0)
    return UpstreamError(f"ClickHouse: {short}", retryable=False)
