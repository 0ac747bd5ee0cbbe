"""Every error the SDK raises, and the one place lower layers are translated.

    SbxError                      the root: ``except SbxError`` catches them all
    ├── InvalidRequestError       400; envd invalid_argument, failed_precondition,
    │                             out_of_range; ``.errors`` lists {field, error}
    ├── AuthenticationError       401; envd unauthenticated (bad access token)
    ├── PaymentRequiredError      402: the organisation's wallet is empty
    ├── PermissionDeniedError     403; envd permission_denied
    ├── NotFoundError             404; envd not_found (sandbox, file, process)
    ├── ConflictError             409; envd already_exists, aborted
    │   └── LimitError            409 "Sandbox limit reached: ..."
    ├── RateLimitError            429; envd resource_exhausted; ``.retry_after``
    ├── SandboxUnavailableError   502, 503, 504; envd unavailable
    ├── ServerError               other 5xx; envd internal, unknown, ...
    ├── SbxTimeoutError           a deadline passed (also a builtin TimeoutError)
    ├── SbxConnectionError        the server could not be reached (also a
    │                             builtin ConnectionError)
    └── CommandExitError          a command exited non-zero and the caller asked
                                  for that to raise (``check=True``)

Answers are translated by :func:`error_from_response`, httpx exceptions by
:func:`map_transport_errors`; nothing else in the SDK builds errors from
status codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx


class SbxError(Exception):
    """Base of every SDK error.

    ``status_code`` is the HTTP status of the answer that caused it, and
    ``code`` the Connect error code envd gave (``"not_found"``), when known.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(SbxError):
    """The request was refused as invalid; ``errors`` holds ``{field, error}`` items."""

    def __init__(
        self,
        message: str,
        *,
        errors: list[dict[str, str]] | None = None,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.errors: list[dict[str, str]] = errors or []

    def __str__(self) -> str:
        if not self.errors:
            return self.message
        details = "; ".join(f"{e.get('field', '?')}: {e.get('error', '?')}" for e in self.errors)
        return f"{self.message}: {details}"


class AuthenticationError(SbxError):
    pass


class PaymentRequiredError(SbxError):
    pass


class PermissionDeniedError(SbxError):
    pass


class NotFoundError(SbxError):
    pass


class ConflictError(SbxError):
    pass


class LimitError(ConflictError):
    """The organisation already has as many sandboxes as its tier allows."""


class RateLimitError(SbxError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.retry_after = retry_after


class SandboxUnavailableError(SbxError):
    pass


class ServerError(SbxError):
    pass


class SbxTimeoutError(SbxError, TimeoutError):
    pass


class SbxConnectionError(SbxError, ConnectionError):
    pass


class CommandExitError(SbxError):
    """A command exited with a non-zero code; raised only when asked (``check=True``)."""

    def __init__(self, stdout: str, stderr: str, exit_code: int, error: str | None) -> None:
        detail = error or (stderr.strip().splitlines() or [""])[-1]
        message = f"Command exited with code {exit_code}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code
        self.error = error


STATUS_ERRORS: dict[int, type[SbxError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
    429: RateLimitError,
    502: SandboxUnavailableError,
    503: SandboxUnavailableError,
    504: SandboxUnavailableError,
}

# Connect error codes (https://connectrpc.com/docs/protocol#error-codes).
CONNECT_ERRORS: dict[str, type[SbxError]] = {
    "canceled": SbxError,
    "unknown": ServerError,
    "invalid_argument": InvalidRequestError,
    "deadline_exceeded": SbxTimeoutError,
    "not_found": NotFoundError,
    "already_exists": ConflictError,
    "permission_denied": PermissionDeniedError,
    "resource_exhausted": RateLimitError,
    "failed_precondition": InvalidRequestError,
    "aborted": ConflictError,
    "out_of_range": InvalidRequestError,
    "unimplemented": ServerError,
    "internal": ServerError,
    "unavailable": SandboxUnavailableError,
    "data_loss": ServerError,
    "unauthenticated": AuthenticationError,
}

_LIMIT_PREFIX = "sandbox limit reached"


def connect_error(code: str, message: str, status_code: int | None = None) -> SbxError:
    """The error for a Connect error ``{code, message}`` from envd."""
    cls = CONNECT_ERRORS.get(code, ServerError)
    return cls(message or code, status_code=status_code, code=code)


def status_error(
    status_code: int,
    message: str,
    *,
    errors: list[dict[str, str]] | None = None,
    retry_after: float | None = None,
) -> SbxError:
    """The error for an HTTP answer whose status says it failed."""
    cls = STATUS_ERRORS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else SbxError
    if cls is ConflictError and message.lower().startswith(_LIMIT_PREFIX):
        cls = LimitError
    if cls is InvalidRequestError:
        return InvalidRequestError(message, errors=errors, status_code=status_code)
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, status_code=status_code)
    return cls(message, status_code=status_code)


def error_from_response(status_code: int, content: bytes, headers: httpx.Headers) -> SbxError:
    """Translate a failed answer from the API, the gateway or envd.

    The three speak different bodies: ``{"message", "errors"?}`` (API),
    ``{"code": int, "message"}`` (gateway, envd's /files) and
    ``{"code": "not_found", "message"}`` (Connect); a string code wins because
    it is more precise than the status.
    """
    body: Any = None
    with suppress(ValueError):
        body = json.loads(content) if content else None
    if not isinstance(body, dict):
        text = content.decode("utf-8", "replace").strip()
        return status_error(status_code, text[:500] or f"HTTP {status_code}")
    message = str(body.get("message") or f"HTTP {status_code}")
    code = body.get("code")
    if isinstance(code, str) and code in CONNECT_ERRORS:
        return connect_error(code, message, status_code)
    raw_errors = body.get("errors")
    errors = (
        [{"field": str(e.get("field", "")), "error": str(e.get("error", ""))}
         for e in raw_errors if isinstance(e, dict)]
        if isinstance(raw_errors, list)
        else None
    )
    return status_error(
        status_code, message, errors=errors, retry_after=_retry_after(headers)
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


@contextmanager
def map_transport_errors(url: str = "") -> Iterator[None]:
    """Turn httpx's exceptions into SDK errors; the SDK's one boundary to httpx.

    A plain context manager also guards ``await`` inside ``async with``-free
    blocks, so the sync and async twins share it.
    """
    where = url or "the server"
    try:
        yield
    except httpx.TimeoutException as exc:
        raise SbxTimeoutError(f"Timed out talking to {where}: {_why(exc)}") from exc
    except httpx.ConnectError as exc:
        raise SbxConnectionError(f"Could not connect to {where}: {_why(exc)}") from exc
    except httpx.TransportError as exc:
        raise SbxConnectionError(f"Connection to {where} failed: {_why(exc)}") from exc
    except httpx.InvalidURL as exc:
        raise SbxError(f"Invalid URL {url!r}: {exc}") from exc


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
