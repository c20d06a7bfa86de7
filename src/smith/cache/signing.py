"""Signed blob URLs, shaped like Azure SAS URLs (``?sp=&se=&sig=``) because the v2 client hands them to the
Azure SDK. A URL grants one permission (``r`` read, ``w`` write) on one entry until ``se`` (unix seconds).
The path has three segments so the Azure SDK can split it into account, container and blob names whatever the
host looks like (an IP address or a DNS name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from smith.errors import AuthError, Forbidden

PATH = "/blob/smith"


def signature(secret: str, perm: str, entry_id: int, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"cache-blob\n{perm}\n{entry_id}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def signed_url(base: str, secret: str, perm: str, entry_id: int, ttl: float) -> str:
    expires = int(time.time() + ttl)
    sig = signature(secret, perm, entry_id, expires)
    return f"{base.rstrip('/')}{PATH}/{entry_id}?sp={perm}&se={expires}&sig={sig}"


def check(secret: str | None, perm: str, entry_id: int, sp: str | None, se: str | None, sig: str | None) -> None:
    if not secret:
        raise AuthError("signed URLs are not configured on this server")
    if not sig or not se or sp != perm:
        raise Forbidden(f"this URL does not grant {'read' if perm == 'r' else 'write'} access")
    try:
        expires = int(se)
    except ValueError as exc:
        raise AuthError("bad expiry in signed URL") from exc
    if not hmac.compare_digest(signature(secret, perm, entry_id, expires), sig):
        raise AuthError("bad signature")
    if expires < time.time():
        raise AuthError("signed URL expired")
