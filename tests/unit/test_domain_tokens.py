"""Pure rules: runner class matching, the job state machine, tokens and webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import pytest

from smith import tokens
from smith.domain.jobs import TERMINAL, JobState, RunnerClass, can_transition, match_runner_class
from smith.errors import AuthError, Forbidden
from smith.logging import _redact

CLASSES = (
    RunnerClass("self-hosted", 1, 2048),
    RunnerClass("smith-2vcpu", 2, 4096),
    RunnerClass("smith-4vcpu", 4, 8192, labels=frozenset({"big"})),
)
SECRET = "a-secret-that-is-long-enough-for-hs256!!"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["self-hosted"], "self-hosted"),
        (["self-hosted", "linux", "x64"], "self-hosted"),
        (["smith-2vcpu"], "smith-2vcpu"),
        (["self-hosted", "SMITH-4VCPU"], "smith-4vcpu"),
        (["big"], "smith-4vcpu"),
        (["ubuntu-latest"], None),
        (["smith-2vcpu", "gpu"], None),
        ([], None),
    ],
)
def test_match_runner_class(labels: list[str], expected: str | None) -> None:
    got = match_runner_class(labels, CLASSES)
    assert (got.name if got else None) == expected


def test_state_machine() -> None:
    assert can_transition(JobState.QUEUED, JobState.ASSIGNED)
    assert can_transition(JobState.RUNNING, JobState.QUEUED)  # lease expired, retried
    assert not can_transition(JobState.QUEUED, JobState.RUNNING)
    for final in TERMINAL:
        assert final.terminal
        assert not any(can_transition(final, s) for s in JobState)


def test_token_roundtrip_scope_and_expiry() -> None:
    tok = tokens.mint(SECRET, scope="agent", subject="h1", ttl_seconds=60, agent_id="h1")
    assert tokens.verify(SECRET, tok, scope="agent")["agent_id"] == "h1"
    with pytest.raises(Forbidden):
        tokens.verify(SECRET, tok, scope="operator")
    with pytest.raises(AuthError, match="invalid"):
        tokens.verify(SECRET + "x", tok, scope="agent")
    old = jwt.encode({"sub": "h1", "scope": "agent", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(SECRET, old, scope="agent")
    none_alg = jwt.encode({"sub": "h1", "scope": "agent", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(AuthError):
        tokens.verify(SECRET, none_alg, scope="agent")
    with pytest.raises(AuthError, match="not configured"):
        tokens.verify(None, tok, scope="agent")
    with pytest.raises(ValueError):
        tokens.mint(SECRET, scope="agent", subject="h", ttl_seconds=0)


def test_token_expiry_is_judged_at_the_given_time() -> None:
    t0 = 1_700_000_000.0  # November 2023
    tok = tokens.mint(SECRET, scope="agent", subject="h1", ttl_seconds=60, now=t0)
    assert tokens.verify(SECRET, tok, scope="agent", now=t0 + 60 + tokens.LEEWAY_SECONDS)["sub"] == "h1"
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(SECRET, tok, scope="agent", now=t0 + 61 + tokens.LEEWAY_SECONDS)
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(SECRET, tok, scope="agent")  # by the wall clock it expired long ago
    early = jwt.encode({"sub": "h", "scope": "agent", "exp": t0 + 60, "nbf": t0 + 30}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="not yet valid"):
        tokens.verify(SECRET, early, scope="agent", now=t0)
    for exp in ("soon", float("inf"), True):
        odd = jwt.encode({"sub": "h", "scope": "agent", "exp": exp}, SECRET, algorithm="HS256")
        with pytest.raises(AuthError, match="invalid"):
            tokens.verify(SECRET, odd, scope="agent", now=t0)


def test_bearer_header() -> None:
    assert tokens.bearer("Bearer abc") == "abc"
    for bad in (None, "", "Basic abc", "Bearer ", "abc"):
        with pytest.raises(AuthError):
            tokens.bearer(bad)


def test_github_signature_matches_githubs_documented_example() -> None:
    # The example in GitHub's "Validating webhook deliveries" docs.
    assert tokens.github_signature(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    body = b'{"zen": "Keep it logically awesome."}'
    expected = "sha256=" + hmac.new(b"It's a Secret to Everybody", body, hashlib.sha256).hexdigest()
    assert tokens.github_signature(b"It's a Secret to Everybody", body) == expected
    assert tokens.verify_github_signature(b"It's a Secret to Everybody", body, expected)
    assert not tokens.verify_github_signature(b"It's a Secret to Everybody", body + b" ", expected)
    assert not tokens.verify_github_signature(b"It's a Secret to Everybody", body, expected.upper())
    assert not tokens.verify_github_signature(b"It's a Secret to Everybody", body, None)


def test_log_redaction_hides_secrets() -> None:
    event = {"event": "x", "token": "abc", "jit_config": "xyz", "Authorization": "Bearer t", "job_id": "1"}
    out = _redact(None, "info", event)
    assert out["token"] == out["jit_config"] == out["Authorization"] == "***"
    assert out["job_id"] == "1"
