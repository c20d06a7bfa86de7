"""The one retry policy: backoff bounds, jitter, the cap, and both forms of Retry-After."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import httpx
import pytest

from smith.agent.client import _error
from smith.retry import RetryPolicy, retry_after

NOW = 1_800_000_000.0


def test_delays_double_up_to_the_cap_within_their_jitter() -> None:
    p = RetryPolicy(retries=8, base=0.5, max=4.0, jitter=0.5)
    rng = random.Random(1)
    delays = list(p.delays(rng))
    assert len(delays) == 8
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for d, c in zip(delays, ceilings, strict=True):
        assert c / 2 <= d <= c


def test_full_jitter_spreads_over_the_whole_range_and_none_is_exact() -> None:
    full = RetryPolicy(base=1.0, max=1.0, jitter=1.0)
    rng = random.Random(7)
    samples = [full.delay(1, rng) for _ in range(2000)]
    assert 0.0 <= min(samples) < 0.05 and 0.95 < max(samples) <= 1.0
    assert RetryPolicy(base=0.3, max=10, jitter=0.0).delay(3) == pytest.approx(1.2)


def test_no_limit_keeps_going_and_huge_attempts_do_not_overflow() -> None:
    p = RetryPolicy(base=0.1, max=30.0, jitter=0.0)
    endless = p.delays()
    assert [next(endless) for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert p.delay(10_000) == 30.0


def test_a_server_wait_replaces_the_backoff_and_is_capped() -> None:
    p = RetryPolicy(base=0.1, max=15.0)
    assert p.wait(1, 3.0) == 3.0
    assert p.wait(1, 3600.0) == 15.0
    assert p.wait(1, -5.0) == 0.0
    assert 0.0 <= p.wait(1, None) <= 0.1


def test_bad_policies_are_refused() -> None:
    for kwargs in ({"jitter": 1.5}, {"factor": 0.5}, {"base": -1.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (formatdate(NOW + 90, usegmt=True), 90.0),  # IMF-fixdate
        (formatdate(NOW - 90, usegmt=True), 0.0),  # already past: now
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_reads_delta_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    got = retry_after(header, NOW)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_the_agent_client_reads_an_http_date_retry_after() -> None:
    later = formatdate(time.time() + 30, usegmt=True)
    err = _error(httpx.Response(503, headers={"retry-after": later}, json={"message": "busy"}))
    assert err.retryable and err.retry_after is not None and 25 <= err.retry_after <= 30
