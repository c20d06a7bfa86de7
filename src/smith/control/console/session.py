"""Operator sessions for the web console.

An operator logs in with an operator token (``smith auth operator-token``); the console answers with a session
cookie made from it: an HS256 JWT of scope ``console`` signed with a key derived from ``SMITH_JWT_SECRET`` (so
the cookie is not itself an operator token the API would take), expiring at the earlier of the token's expiry
and ``SMITH_CONSOLE_SESSION_TTL_SECONDS``. The cookie is HttpOnly, SameSite=Strict, Path=/ui and Secure over
HTTPS. Every POST also carries a CSRF token (a hidden field or ``X-CSRF-Token``), an HMAC of the session's id,
and a request whose Origin is another site is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from smith import tokens
from smith.errors import AuthError, Forbidden

COOKIE = "smith_session"
SCOPE = "console"


@dataclass(frozen=True)
class Session:
    operator: str
    session_id: str
    expires_at: float
    csrf: str


class Sessions:
    def __init__(self, jwt_secret: str | None, ttl_seconds: float) -> None:
        self._operator_secret = jwt_secret
        self._key = (
            hmac.new(jwt_secret.encode(), b"smith console session", hashlib.sha256).hexdigest() if jwt_secret else None
        )
        self.ttl = ttl_seconds

    def _csrf(self, session_id: str) -> str:
        assert self._key is not None
        return hmac.new(self._key.encode(), b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()

    def login(self, operator_token: str) -> tuple[str, Session]:
        """Check an operator token; the cookie value and session it opens (AuthError if the token is bad)."""
        claims = tokens.verify(self._operator_secret, operator_token.strip(), scope="operator")
        assert self._key is not None  # verify refused a missing secret
        now = time.time()
        expires = min(now + self.ttl, float(claims["exp"]))
        if expires - now < 1:
            raise AuthError("token expired")
        session_id = secrets.token_urlsafe(16)
        value = tokens.mint(
            self._key, scope=SCOPE, subject=str(claims["sub"]), ttl_seconds=expires - now, now=now, sid=session_id
        )
        return value, Session(str(claims["sub"]), session_id, expires, self._csrf(session_id))

    def from_cookie(self, value: str | None) -> Session | None:
        if not value or self._key is None:
            return None
        try:
            claims = tokens.verify(self._key, value, scope=SCOPE)
        except AuthError:
            return None
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            return None
        return Session(str(claims["sub"]), sid, float(claims["exp"]), self._csrf(sid))

    def from_request(self, request: Request) -> Session | None:
        """The cookie's session, or one for a request carrying an operator token itself (scripts, curl)."""
        if request.headers.get("authorization"):
            try:
                claims = tokens.verify(
                    self._operator_secret, tokens.bearer(request.headers.get("authorization")), scope="operator"
                )
            except AuthError:
                return None
            # No cookie is involved, so there is nothing to forge: its CSRF token is its own id's.
            sid = "bearer:" + str(claims.get("jti", ""))
            return Session(str(claims["sub"]), sid, float(claims["exp"]), self._csrf(sid))
        return self.from_cookie(request.cookies.get(COOKIE))


def same_origin(request: Request) -> None:
    """Refuse a state-changing request sent from another site (Origin, else Referer, must name this host)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # not a browser's cross-site form (browsers send Origin on every POST); the CSRF token still applies
    host = request.headers.get("host", "")
    rest = origin.split("://", 1)[-1]
    if rest.split("/", 1)[0] != host:
        raise Forbidden("cross-site request refused")


def check_csrf(session: Session, presented: str | None) -> None:
    if not presented or not hmac.compare_digest(presented, session.csrf):
        raise Forbidden("missing or wrong CSRF token")
