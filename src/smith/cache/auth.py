"""Who a request comes from: cache tokens (``scope=cache``, minted per job) and admin tokens (``cache-admin``).

A job's token carries ``org`` (and usually ``repo``, ``ref``, ``base_ref``, ``default_ref``); those claims, not
anything in the request, decide what the job may read and where it writes.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from smith import tokens
from smith.cache.settings import CacheSettings
from smith.domain.cache import Tenant, check_name, check_ref
from smith.errors import AuthError

ADMIN_SCOPE = "cache-admin"


def tenant_from_claims(claims: dict[str, Any]) -> Tenant:
    org = str(claims.get("org") or claims.get("sub") or "")
    if not org:
        raise AuthError("token names no org")
    check_name(org, what="org")
    repo = str(claims.get("repo") or "")
    if repo:
        check_name(repo, what="repo")
    ref = check_ref(str(claims.get("ref") or ""))
    reads: list[str] = [ref]
    for extra in (claims.get("base_ref"), claims.get("default_ref")):
        if extra and str(extra) not in reads:
            reads.append(check_ref(str(extra)))
    return Tenant(org=org, repo=repo, ref=ref, read_refs=tuple(reads))


def _secret(request: Request) -> str | None:
    settings: CacheSettings = request.app.state.settings
    return settings.secret()


def tenant(request: Request) -> Tenant:
    claims = tokens.verify(_secret(request), tokens.bearer(request.headers.get("authorization")), scope="cache")
    return tenant_from_claims(claims)


def admin(request: Request) -> str:
    claims = tokens.verify(_secret(request), tokens.bearer(request.headers.get("authorization")), scope=ADMIN_SCOPE)
    return str(claims["sub"])


def tenant_or_admin(request: Request) -> Tenant:
    """An org token, or an admin token (``Tenant.admin``): for read-only views such as ``/usage``."""
    token = tokens.bearer(request.headers.get("authorization"))
    try:
        return tenant_from_claims(tokens.verify(_secret(request), token, scope="cache"))
    except AuthError:
        claims = tokens.verify(_secret(request), token, scope=ADMIN_SCOPE)
        return Tenant(org="", admin=True, read_refs=(), ref=str(claims["sub"]))
