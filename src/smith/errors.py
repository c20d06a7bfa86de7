"""One error tree for all of Smith.

::

    SmithError                      retryable? http
    ├── ConfigError                 no         500
    ├── InvalidInput                no         400
    │   ├── PayloadTooLarge         no         413
    │   ├── RequestTimeout          no         408   (a body that does not arrive in time)
    │   └── NotFound                no         404
    ├── AuthError                   no         401
    │   └── Forbidden               no         403
    ├── Conflict                    no         409
    ├── Unavailable                 yes        503   (a dependency is down: Redis, S3, ClickHouse)
    │   └── RateLimited             yes        429   (carries retry_after)
    ├── UpstreamError               maybe      502   (GitHub, Firecracker answered with an error)
    └── VMError                     no         500   (a VM backend failed)

Every error says whether a caller may retry it (``retryable``) and, where it knows, how long to wait
(``retry_after`` seconds). Adapters turn their library's exceptions into these; HTTP apps map them to a
status in one exception handler.
"""

from __future__ import annotations


class SmithError(Exception):
    """Base of every error Smith raises on purpose."""

    status_code: int = 500
    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "message": self.message, "retryable": self.retryable}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class ConfigError(SmithError):
    code = "config"


class InvalidInput(SmithError):
    status_code = 400
    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    status_code = 413
    code = "payload_too_large"


class RequestTimeout(InvalidInput):
    status_code = 408
    code = "request_timeout"


class NotFound(InvalidInput):
    status_code = 404
    code = "not_found"


class AuthError(SmithError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AuthError):
    status_code = 403
    code = "forbidden"


class Conflict(SmithError):
    status_code = 409
    code = "conflict"


class Unavailable(SmithError):
    status_code = 503
    code = "unavailable"
    retryable = True


class RateLimited(Unavailable):
    status_code = 429
    code = "rate_limited"


class UpstreamError(SmithError):
    status_code = 502
    code = "upstream"


class VMError(SmithError):
    code = "vm"
