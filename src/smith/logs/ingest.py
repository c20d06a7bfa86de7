"""Turning a ``POST /v1/logs`` body (NDJSON of ``smith.wire.logs.LogLine``) into lines for ClickHouse.

All or nothing: if any line is malformed the whole batch is refused with every bad line's number, so a batch
is never half-written. Lines over the size limit are cut at a UTF-8 boundary and end with a marker.

This runs for every one of hundreds of thousands of lines a second, so the whole body is decoded and validated
in one call by msgspec (C) into ``Line`` structs, and what is left (host default, truncation, per-job seq
ranges) is done with C-level iteration. ``tests/logs/test_ingest.py`` checks the rules agree with the pydantic
model in ``smith.wire.logs``, which documents the wire format.

Encodings for ``INSERT ... FORMAT JSONEachRow``: ``encode_lines`` writes the lines in their wire shape (modern
servers compute ``ts_us`` and ``day`` from ``ts`` themselves; see ``migrations/0002``); ``encode_rows`` writes
every stored column (legacy servers, which have neither EPHEMERAL columns nor such defaults).
"""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import orjson

from smith.errors import Forbidden, InvalidInput
from smith.wire.logs import JOB_ID_RE, TRUNCATION_MARKER, BadLine

MAX_BAD_LINES_LISTED = 100
_MAX_TS = 32503680000.0  # year 3000
_DAY_CACHE: dict[int, str] = {}
_DAY_US = 86_400_000_000

_job_id = operator.attrgetter("job_id")
_seq = operator.attrgetter("seq")
_host = operator.attrgetter("host")
_text = operator.attrgetter("line")
_truncated = operator.attrgetter("truncated")


class Line(msgspec.Struct, omit_defaults=True):
    """One line as validated and as sent to a modern server (fields at their default are left out)."""

    job_id: str
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    ts: Annotated[float, msgspec.Meta(ge=0, lt=_MAX_TS)]
    stream: Literal["stdout", "stderr", "system"] = "stdout"
    line: str = ""
    host: Annotated[str, msgspec.Meta(max_length=253)] = ""
    vm: Annotated[str, msgspec.Meta(max_length=128)] = ""
    step: Annotated[str, msgspec.Meta(max_length=256)] = ""
    repo: Annotated[str, msgspec.Meta(max_length=256)] = ""
    last: bool = False
    truncated: bool = False  # set here, never taken from the agent


_DECODE_MANY = msgspec.json.Decoder(list[Line])
_DECODE_ONE = msgspec.json.Decoder(Line)
_ENCODE = msgspec.json.Encoder()
# Column list of a modern insert: ts fills the EPHEMERAL column ts_us and day are computed from.
LINE_COLUMNS = "job_id, seq, ts, stream, line, host, vm, step, repo, last, truncated"
ROW_COLUMNS = "job_id, seq, ts_us, day, stream, line, host, vm, step, repo, last, truncated"


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


Spans = dict[str, tuple[int, int]]


@dataclass
class Batch:
    lines: list[Line]
    truncated: int = 0
    spans: Spans | None = None  # each job's (lowest, highest) seq, if each job's seqs strictly increase


def day_of(ts_us: int) -> str:
    """``YYYY-MM-DD`` (UTC) of a timestamp in microseconds; old servers want Date as a string."""
    n = ts_us // _DAY_US
    s = _DAY_CACHE.get(n)
    if s is None:
        s = _DAY_CACHE[n] = (dt.date(1970, 1, 1) + dt.timedelta(days=n)).isoformat()
    return s


def ts_us(ts: float) -> int:
    """Microseconds of ``ts`` seconds, as the modern schema's DEFAULT computes it: ``toInt64(round(ts * 1e6))``."""
    return round(ts * 1_000_000)


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


def spans(lines: list[Line]) -> Spans | None:
    """Each job's (lowest, highest) seq in ``lines``, or None unless each job's seqs strictly increase."""
    if not lines:
        return {}
    jobs = list(map(_job_id, lines))
    seqs = list(map(_seq, lines))
    first = jobs[0]
    if jobs.count(first) == len(jobs):  # one job: the usual batch
        if len(seqs) > 1 and not all(map(operator.lt, seqs, seqs[1:])):
            return None
        return {first: (seqs[0], seqs[-1])}
    out: dict[str, tuple[int, int]] = {}
    last: dict[str, int] = {}
    for j, s in zip(jobs, seqs, strict=True):
        prev = last.get(j)
        if prev is None:
            out[j] = (s, s)
        elif s <= prev:
            return None
        last[j] = s
    return {j: (lo, last[j]) for j, (lo, _) in out.items()}


def _reason(exc: msgspec.ValidationError) -> str:
    """``field: what is wrong`` from msgspec's ``... - at `$.field` `` message."""
    message = str(exc)
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    field = where.rstrip("`").lstrip(".")
    return f"{field}: {text}" if field else text


def _ids_ok(lines: list[Line]) -> bool:
    """Every job id in ``lines`` is well-formed (checked once per distinct id)."""
    ids: set[str] = set(map(_job_id, lines))
    return all(JOB_ID_RE.match(job_id) for job_id in ids)


_BAD_ID = "job_id: required; letters, digits and ._:- only, 1-128 characters"


def _decode_each(body: bytes) -> tuple[list[tuple[int, Line]], list[BadLine], int]:
    """Line by line (blank lines skipped): the good ones with their numbers, and the bad ones."""
    good: list[tuple[int, Line]] = []
    bad: list[BadLine] = []
    total_bad = 0
    for n, raw in enumerate(body.split(b"\n"), 1):
        if not raw.strip():
            continue
        error = None
        try:
            line = _DECODE_ONE.decode(raw)
        except msgspec.ValidationError as exc:
            error = _reason(exc)
        except msgspec.DecodeError as exc:
            error = f"not JSON: {exc}"
        except UnicodeDecodeError:
            error = "not UTF-8"
        else:
            if JOB_ID_RE.match(line.job_id):
                good.append((n, line))
                continue
            error = _BAD_ID
        total_bad += 1
        if len(bad) < MAX_BAD_LINES_LISTED:
            bad.append(BadLine(line=n, error=error))
    return good, bad, total_bad


def parse(body: bytes, *, host_default: str = "", max_line_bytes: int = 65536, max_lines: int = 100_000) -> Batch:
    """Validate a whole NDJSON body into lines, or raise ``BadBatchError`` naming each bad line."""
    text = body.replace(b"\r\n", b"\n").strip()
    lines: list[Line] | None = None
    if text:
        try:  # fast path: one C call for the whole batch
            lines = _DECODE_MANY.decode(b"[" + text.replace(b"\n", b",") + b"]")
        except (msgspec.DecodeError, UnicodeDecodeError):  # (ValidationError is a DecodeError)
            lines = None
        if lines is not None and (text.count(b"\n") + 1 != len(lines) or not _ids_ok(lines)):
            lines = None  # a blank line, two values on one line, or a bad job id: find them by number
    else:
        lines = []
    if lines is None:
        good, bad, total_bad = _decode_each(body)
        if len(good) + total_bad > max_lines:
            raise InvalidInput(f"{len(good) + total_bad} lines in one batch; at most {max_lines}")
        if total_bad:
            raise BadBatchError(bad, total_bad)
        lines = [line for _, line in good]
    if len(lines) > max_lines:
        raise InvalidInput(f"{len(lines)} lines in one batch; at most {max_lines}")
    batch = Batch(lines)
    if not lines:
        batch.spans = {}
        return batch
    if any(map(_truncated, lines)):  # only the pipeline says a line was cut
        for line in lines:
            line.truncated = False
    if not all(map(_host, lines)):
        for line in lines:
            if not line.host:
                line.host = host_default
    if max(map(len, map(_text, lines))) * 4 > max_line_bytes:
        for line in lines:
            cut = truncate(line.line, max_line_bytes)
            if cut is not None:
                line.line = cut
                line.truncated = True
                batch.truncated += 1
    batch.spans = spans(lines)
    return batch


def bind(batch: Batch, job_id: str, host: str) -> None:
    """Hold a batch to its token: every line must be ``job_id``'s (else ``Forbidden``, nothing written), and
    every line's host is ``host`` whatever the body said. C-level passes; the usual batch has its spans."""
    lines = batch.lines
    jobs = set(batch.spans) if batch.spans is not None else set(map(_job_id, lines))
    if jobs - {job_id}:
        other = sorted(jobs - {job_id})[0]
        raise Forbidden(f"this token writes the lines of job {job_id!r} only (the batch has {other!r})")
    if list(map(_host, lines)).count(host) != len(lines):
        for line in lines:
            line.host = host


def encode_lines(lines: list[Line]) -> bytes:
    """Lines in their wire shape as one JSON array (JSONEachRow takes one; a single C call)."""
    return _ENCODE.encode(lines)


def encode_rows(lines: list[Line]) -> bytes:
    """Every stored column, one JSON object a line (what old servers take)."""
    dumps = orjson.dumps
    out = []
    for x in lines:
        us = ts_us(x.ts)
        out.append(
            dumps(
                {
                    "job_id": x.job_id,
                    "seq": x.seq,
                    "ts_us": us,
                    "day": day_of(us),
                    "stream": x.stream,
                    "line": x.line,
                    "host": x.host,
                    "vm": x.vm,
                    "step": x.step,
                    "repo": x.repo,
                    "last": 1 if x.last else 0,
                    "truncated": 1 if x.truncated else 0,
                }
            )
        )
    return b"\n".join(out)
