"""The log pipeline's HTTP API: NDJSON lines in from the agents, pages, searches and summaries out.

=======================================  =========================  ===========================================
POST /v1/logs                            NDJSON of ``LogLine``      -> IngestResponse (agent token)
                                                                       400 BadBatch (nothing written), 413, 429
GET  /v1/jobs/{job_id}/logs              ?after=&limit=&tail=       -> LogPage (operator token); 404 unknown job
GET  /v1/jobs/{job_id}/logs?follow=true  server-sent events         ``line`` events (a ``LogRecord`` each), then
                                                                       ``end`` once the job's last line is stored
GET  /v1/jobs/{job_id}/logs/summary                                 -> JobSummary
GET  /v1/logs/search                     ?q=&since=&until=&repo=&host=&job_id=&limit=  -> SearchResult
=======================================  =========================  ===========================================

A line is identified by ``(job_id, seq)``: the agent numbers each job's lines 1, 2, 3... and a batch sent twice
is stored once. ``ts`` is seconds since the epoch (float). ``last`` marks a job's final line: followers stop
there.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stream = Literal["stdout", "stderr", "system"]
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
TRUNCATION_MARKER = " …[smith: truncated {dropped} bytes]"


class LogLine(BaseModel):
    """One line of a job's output as the agent ships it (one JSON object per NDJSON line)."""

    model_config = ConfigDict(strict=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    seq: int = Field(ge=0, lt=2**63, description="Per-job sequence number; (job_id, seq) is the line's identity")
    ts: float = Field(ge=0, description="Seconds since the epoch, taken where the line was produced")
    stream: Stream = "stdout"
    line: str = ""
    host: str = Field("", max_length=253, description="Host agent (defaults to the token's agent id)")
    vm: str = Field("", max_length=128)
    step: str = Field("", max_length=256, description="Workflow step, or firecracker / firecracker-metrics")
    repo: str = Field("", max_length=256, description="owner/name")
    last: bool = Field(False, description="The job's final line (its exit): followers stop after it")


class BadLine(BaseModel):
    line: int = Field(description="1-based line number in the request body")
    error: str


class IngestResponse(BaseModel):
    accepted: int = Field(description="Lines now durably stored (new ones)")
    duplicates: int = Field(0, description="Lines already stored (a retried batch), skipped")
    truncated: int = Field(0, description="Lines cut to the size limit, with a marker")


class BadBatch(BaseModel):
    error: Literal["invalid_input"] = "invalid_input"
    message: str
    retryable: bool = False
    bad_lines: list[BadLine]


class LogRecord(BaseModel):
    """A stored line as the read APIs return it."""

    job_id: str
    seq: int
    ts: float
    stream: str
    line: str
    host: str = ""
    vm: str = ""
    step: str = ""
    repo: str = ""
    truncated: bool = False
    last: bool = False


class LogPage(BaseModel):
    job_id: str
    lines: list[LogRecord]
    next_after: int = Field(description="Pass as ?after= to get the lines after this page")
    complete: bool = Field(description="The job's last line is stored and this page reaches it")


class SearchResult(BaseModel):
    hits: list[LogRecord]
    limited: bool = Field(description="More lines matched than the limit")
    since: float | None = Field(
        None, description="Start of the window searched: the one given, or (no since, no job_id) the default window"
    )
    until: float | None = Field(None, description="End of the window searched, if one was given")


class JobSummary(BaseModel):
    job_id: str
    lines: int
    bytes: int
    first_ts: float
    last_ts: float
    error_lines: int = Field(description="Lines on stderr, or that contain 'error' (any case)")
    stderr_lines: int
    truncated_lines: int
    complete: bool = Field(description="The job's last line is stored")
    last_seq: int


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last second ClickHouse's DateTime64 takes


def parse_time(value: str, *, now: float | None = None) -> float:
    """Epoch seconds from ``1h`` / ``30m`` / ``2d`` (that long ago), or from epoch seconds as given."""
    now = time.time() if now is None else now
    m = _DURATION.match(value)
    if m:
        ts = now - float(m.group(1)) * _UNITS[m.group(2)]
        if ts < 0:
            raise ValueError(f"{value!r} reaches back before 1970")
        return ts
    try:
        ts = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a duration (90s, 15m, 1h, 2d, 1w) nor epoch seconds") from None
    if not 0 <= ts <= MAX_TIME:  # (NaN fails this too)
        raise ValueError(f"{value!r} is not a time between 1970 and 9999")
    return ts
