"""The log pipeline's metrics (docs/parts/observability.md): lines written, dropped as duplicates, refused,
truncated, and how long each batch insert took."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import Counter, Histogram

from smith.errors import InvalidInput
from smith.logs.ingest import BadBatchError, Batch
from smith.metrics import FAST_BUCKETS

INGESTED = Counter("smith_log_lines_ingested_total", "Log lines written to ClickHouse")
DUPLICATES = Counter("smith_log_lines_duplicate_total", "Log lines dropped as already stored (a resend)")
REJECTED = Counter("smith_log_lines_rejected_total", "Log lines refused, by reason", ["reason"])
TRUNCATED = Counter("smith_log_lines_truncated_total", "Log lines cut to SMITH_LOGS_MAX_LINE_BYTES")
BATCH = Histogram("smith_log_batch_seconds", "One batch insert, from taken to stored", buckets=FAST_BUCKETS)


@contextlib.contextmanager
def parsing() -> Iterator[list[Batch]]:
    """Around ``ingest.parse``: counts the lines of a refused batch; append the parsed batch to count its cuts."""
    got: list[Batch] = []
    try:
        yield got
    except BadBatchError as exc:
        REJECTED.labels(reason="malformed").inc(exc.total_bad)
        raise
    except InvalidInput:
        REJECTED.labels(reason="batch_too_large").inc()
        raise
    for batch in got:
        TRUNCATED.inc(batch.truncated)


def written(lines: int, duplicates: int, seconds: float) -> None:
    INGESTED.inc(lines)
    DUPLICATES.inc(duplicates)
    BATCH.observe(seconds)
