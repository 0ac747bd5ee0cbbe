"""The server's one exception tree. Each error carries its HTTP status; the
API renders it in the error shape of the surface that was called.

    SbxError
    ├── InvalidRequest (400)      field errors listed one by one
    ├── Unauthorized (401)
    ├── PaymentRequired (402)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)            limits on seed 000, illegal state changes
    ├── RateLimited (429)         carries retry_after
    ├── NotSupported (501)        a capability this server lacks
    └── Unavailable (503)         the runtime could not start the sandbox
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    error: str


class SbxError(Exception):
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SbxError):
    status = 400

    def __init__(self, errors: list[FieldError], message: str = "Invalid request") -> None:
        super().__init__(message)
        self.errors = errors


class Unauthorized(SbxError):
    status = 401


class PaymentRequired(SbxError):
    status = 402


class Forbidden(SbxError):
    status = 403


class NotFound(SbxError):
    status = 404


class Conflict(SbxError):
    status = 409


class RateLimited(SbxError):
    status = 429

    def __init__(self, message: str, retry_after: int, should_retry: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # False when waiting alone will not help (a concurrency limit): the
        # E2B SDK honours `Should-Retry: false` and does not retry.
        self.should_retry = should_retry


class Unavailable(SbxError):
    status = 503

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        # Set when the runtime is expected back (the server is still
        # preparing it); None: retrying will not help.
        self.retry_after = retry_after


class TooLarge(SbxError):
    status = 413


class NotSupported(SbxError):
    status = 501
