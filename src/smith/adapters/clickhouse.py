"""What both ClickHouse adapters share: dialects, literals, and error mapping.

Two dialects: ``modern`` (ClickHouse 22.8 LTS and later, chdb) has table TTLs, data-skipping indexes,
LowCardinality and EPHEMERAL columns; ``legacy`` is for older servers such as Debian's 18.16, which lack some or
all of those (plain columns, every column sent on insert, retention by a partition sweep). Queries are
built with ``literal()`` rather than server-side parameters, because 18.16 has no query parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from smith.errors import InvalidInput, SmithError, Unavailable, UpstreamError

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
# Server error codes that mean "this data is wrong": the insert that carried it is refused for good.
_DATA_CODES = {
    6,  # CANNOT_PARSE_TEXT
    25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  # CANNOT_PARSE_QUOTED_STRING
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
}
_CODE = re.compile(r"Code:\s*(\d+)")
_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"})


def dialect_for_version(version: str) -> str:
    """``legacy`` below 22.8 (no EPHEMERAL columns; below 20.3 also no TTL, skip indexes or LowCardinality)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return LEGACY if (parts[0], parts[1]) < (22, 8) else MODERN


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
    return "'" + value.translate(_ESCAPES) + "'"


def settings_clause(settings: Mapping[str, str | int] | None) -> str:
    """`` SETTINGS a = 1, b = 'x'`` for a query, or an empty string."""
    if not settings:
        return ""
    for key in settings:
        identifier(key)
    return " SETTINGS " + ", ".join(f"{key} = {literal(value)}" for key, value in settings.items())


def like_contains(text: str) -> str:
    """A LIKE pattern literal matching ``text`` anywhere (``%``, ``_`` and ``\\`` in it match themselves)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return literal(f"%{escaped}%")


def identifier(name: str) -> str:
    """A database/table name, refused unless it is a plain identifier (it is spliced into SQL)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ValueError(f"{name!r} is not a plain identifier (letters, digits, underscore)")
    return name


def error_code(message: str) -> int | None:
    """The ``Code: N`` a ClickHouse exception text carries, if any."""
    m = _CODE.search(message)
    return int(m.group(1)) if m else None


def query_error(message: str, *, status: int | None = None) -> SmithError:
    """Our error for a failed query: ``Unavailable`` when retrying can help, ``InvalidInput`` when the data it
    carried is what the server refused, else ``UpstreamError``."""
    short = message.strip().splitlines()[0][:500] if message.strip() else f"HTTP {status}"
    code = error_code(message)
    if code in _RETRYABLE_CODES or status in (502, 503, 504):
        return Unavailable(f"ClickHouse is busy: {short}", retry_after=1.0)
    if code in _DATA_CODES:
        return InvalidInput(f"ClickHouse refused the data: {short}")
    return UpstreamError(f"ClickHouse: {short}", retryable=False)
