"""Signed tokens and webhook signatures.

Tokens are HS256 JWTs with a ``scope`` claim (``agent``, ``operator``, ``cache``, ``logs``), an expiry and a
subject. ``verify`` checks signature, expiry and scope and raises ``AuthError``; it never logs the token. Both
take ``now`` (epoch seconds, default the wall clock), so tests mint tokens in the past instead of waiting.
What each token allows, who mints and who verifies it: docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from typing import Any

import jwt

from smith.domain.cache import job_cache_claims
from smith.domain.jobs import Job, check_agent_id
from smith.errors import AuthError, Forbidden

ALGORITHM = "HS256"
LEEWAY_SECONDS = 5


def mint(secret: str, *, scope: str, subject: str, ttl_seconds: float, now: float | None = None, **claims: Any) -> str:
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if scope in ("agent", "logs"):  # what the servers will refuse is not minted either
        check_agent_id(claims.get("agent_id", subject))
    issued = int(time.time() if now is None else now)
    payload = {
        "sub": subject,
        "scope": scope,
        "iat": issued,
        "exp": issued + int(ttl_seconds),
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify(secret: str | None, token: str, *, scope: str, now: float | None = None) -> dict[str, Any]:
    """The token's claims, if its signature, expiry and scope are right; else ``AuthError``/``Forbidden``."""
    if not secret:
        raise AuthError("token authentication is not configured on this server")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # Times are checked below against ``now``; PyJWT would read the wall clock itself.
            options={"require": ["exp", "sub", "scope"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError as exc:
        raise AuthError("invalid token") from exc
    at = time.time() if now is None else now
    exp, nbf = claims["exp"], claims.get("nbf", 0)
    if not _number(exp) or not _number(nbf):
        raise AuthError("invalid token")
    if at > exp + LEEWAY_SECONDS:
        raise AuthError("token expired")
    if at < nbf - LEEWAY_SECONDS:
        raise AuthError("token not yet valid")
    if claims.get("scope") != scope:
        raise Forbidden(f"token scope {claims.get('scope')!r} cannot be used here (needs {scope!r})")
    return claims


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def agent_id(secret: str | None, header: str | None) -> str:
    """The agent id an ``Authorization`` header's agent token names (claim ``agent_id``, else ``sub``); a token
    whose id is not a valid agent id is refused (``Forbidden``)."""
    claims = verify(secret, bearer(header), scope="agent")
    value = claims["agent_id"] if "agent_id" in claims else claims.get("sub")
    try:
        return check_agent_id(value)
    except ValueError as exc:
        raise Forbidden(f"this agent token names no valid agent: {exc}") from exc


def mint_logs(secret: str, *, job_id: str, agent_id: str, ttl_seconds: float) -> str:
    """A token that lets the holder write the lines of one job (``POST /v1/logs``), as host ``agent_id``."""
    return mint(secret, scope="logs", subject=job_id, ttl_seconds=ttl_seconds, job_id=job_id, agent_id=agent_id)


CACHE_TOKEN_TTL = 6 * 3600  # a GitHub job runs for at most 6 hours


def mint_job_cache(secret: str, job: Job, claims: dict[str, Any] | None = None) -> str:
    """A job's cache token: its org, repository and branches (``claims``, by default ``job_cache_claims``), for
    6 hours."""
    claims = claims if claims is not None else job_cache_claims(job)
    return mint(secret, scope="cache", subject=claims["org"], ttl_seconds=CACHE_TOKEN_TTL, job_id=job.id, **claims)


def verify_logs(secret: str | None, header: str | None) -> tuple[str, str]:
    """``(job_id, agent_id)`` of the ``logs`` token in an ``Authorization`` header."""
    claims = verify(secret, bearer(header), scope="logs")
    job_id, host = claims.get("job_id"), claims.get("agent_id")
    try:
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("no job id")
        return job_id, check_agent_id(host)
    except ValueError as exc:
        raise Forbidden(f"this logs token names no job or no valid agent: {exc}") from exc


def bearer(header: str | None) -> str:
    """The token out of an ``Authorization: Bearer ...`` header."""
    if not header:
        raise AuthError("missing Authorization header")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return token.strip()


def github_signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_github_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of GitHub's HMAC-SHA256 signature over the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    expected = github_signature(secret, body)
    return hmac.compare_digest(expected.encode(), header.encode())
