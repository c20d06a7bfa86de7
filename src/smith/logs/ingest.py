"""Turning a ``POST /v1/logs`` body (NDJSON of ``smith.wire.logs.LogLine``) into rows for ClickHouse.

All or nothing: if any line is malformed the whole batch is refused with every bad line's number, so a batch
is never half-written. Lines over the size limit are cut at a UTF-8 boundary and end with a marker. Validation
is hand-written (not pydantic per line) because it runs for every one of hundreds of thousands of lines a
second; ``tests/logs/test_ingest.py`` checks it agrees with the pydantic model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

from smith.errors import InvalidInput
from smith.wire.logs import JOB_ID_RE, STREAMS, TRUNCATION_MARKER, BadLine

MAX_BAD_LINES_LISTED = 100
_MAX_TS = 32503680000.0  # year 3000
_LIMITS = {"host": 253, "vm": 128, "step": 256, "repo": 256}
_DAY_CACHE: dict[int, str] = {}
_DAY_US = 86_400_000_000


class BadBatchError(InvalidInput):
    """Some lines of a batch are malformed; nothing of it was written."""

    def __init__(self, bad: list[BadLine], total_bad: int) -> None:
        more = f" (first {len(bad)} listed)" if total_bad > len(bad) else ""
        first = bad[0]
        super().__init__(f"{total_bad} malformed line(s){more}; first: line {first.line}: {first.error}")
        self.bad_lines = bad
        self.total_bad = total_bad

    def to_dict(self) -> dict[str, object]:
        body = super().to_dict()
        body["bad_lines"] = [b.model_dump() for b in self.bad_lines]
        body["bad_line_count"] = self.total_bad
        return body


@dataclass
class Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0


def day_of(ts_us: int) -> str:
    """``YYYY-MM-DD`` (UTC) of a timestamp in microseconds; old servers want Date as a string."""
    n = ts_us // _DAY_US
    s = _DAY_CACHE.get(n)
    if s is None:
        s = _DAY_CACHE[n] = (dt.date(1970, 1, 1) + dt.timedelta(days=n)).isoformat()
    return s


def truncate(line: str, max_bytes: int) -> str | None:
    """``line`` cut to at most ``max_bytes`` UTF-8 bytes including a marker, or None if it fits."""
    if len(line) * 4 <= max_bytes:
        return None
    raw = line.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return None
    room = max_bytes - len(TRUNCATION_MARKER.format(dropped=len(raw)).encode())
    kept = raw[: max(room, 0)].decode("utf-8", "ignore")
    dropped = len(raw) - len(kept.encode("utf-8", "surrogatepass"))
    return kept + TRUNCATION_MARKER.format(dropped=dropped)


def _check(obj: Any, host_default: str, max_line_bytes: int, batch: Batch) -> str | None:
    """Append ``obj`` to the batch as a row; or say what is wrong with it."""
    if type(obj) is not dict:
        return "not a JSON object"
    job_id = obj.get("job_id")
    if type(job_id) is not str or not JOB_ID_RE.match(job_id):
        return "job_id: required; letters, digits and ._:- only, 1-128 characters"
    seq = obj.get("seq")
    if type(seq) is not int or not 0 <= seq < 2**63:
        return "seq: required; an integer from 0 to 2^63-1"
    ts = obj.get("ts")
    if not isinstance(ts, int | float) or type(ts) is bool or not 0 <= ts < _MAX_TS:
        return "ts: required; seconds since the epoch"
    stream = obj.get("stream", "stdout")
    if stream not in STREAMS:
        return "stream: must be stdout, stderr or system"
    line = obj.get("line", "")
    if type(line) is not str:
        return "line: must be a string"
    last = obj.get("last", False)
    if type(last) is not bool:
        return "last: must be true or false"
    extra = {}
    for key, limit in _LIMITS.items():
        value = obj.get(key, "")
        if type(value) is not str or len(value) > limit:
            return f"{key}: must be a string of at most {limit} characters"
        extra[key] = value
    cut = truncate(line, max_line_bytes)
    if cut is not None:
        line = cut
        batch.truncated += 1
    ts_us = int(ts * 1_000_000)
    batch.rows.append(
        {
            "job_id": job_id,
            "seq": seq,
            "ts_us": ts_us,
            "day": day_of(ts_us),
            "stream": stream,
            "host": extra["host"] or host_default,
            "vm": extra["vm"],
            "step": extra["step"],
            "repo": extra["repo"],
            "line": line,
            "truncated": 1 if cut is not None else 0,
            "last": 1 if last else 0,
        }
    )
    return None


def parse(body: bytes, *, host_default: str = "", max_line_bytes: int = 65536, max_lines: int = 100_000) -> Batch:
    """Validate a whole NDJSON body into rows, or raise ``BadBatchError`` naming each bad line."""
    text = body.replace(b"\r\n", b"\n").strip(b"\n")
    objs: list[Any] | None = None
    if text:
        try:  # fast path: one C call for the whole batch
            parsed = orjson.loads(b"[" + text.replace(b"\n", b",") + b"]")
            objs = parsed if isinstance(parsed, list) else None
        except orjson.JSONDecodeError:
            objs = None
    batch = Batch()
    bad: list[BadLine] = []
    total_bad = 0
    if objs is not None and text.count(b"\n") + 1 == len(objs):
        numbered: list[tuple[int, Any]] = list(enumerate(objs, 1))
    else:  # slow path: find the bad lines by number (blank lines are skipped)
        numbered = []
        for n, raw in enumerate(body.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                numbered.append((n, orjson.loads(raw)))
            except orjson.JSONDecodeError as exc:
                total_bad += 1
                if len(bad) < MAX_BAD_LINES_LISTED:
                    bad.append(BadLine(line=n, error=f"not JSON: {exc}"))
    if len(numbered) + total_bad > max_lines:
        raise InvalidInput(f"{len(numbered) + total_bad} lines in one batch; at most {max_lines}")
    for n, obj in numbered:
        err = _check(obj, host_default, max_line_bytes, batch)
        if err is not None:
            total_bad += 1
            if len(bad) < MAX_BAD_LINES_LISTED:
                bad.append(BadLine(line=n, error=err))
    if total_bad:
        bad.sort(key=lambda b: b.line)
        raise BadBatchError(bad, total_bad)
    return batch


def encode(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONEachRow for ``INSERT ... FORMAT JSONEachRow``."""
    dumps = orjson.dumps
    return b"\n".join([dumps(r) for r in rows])
