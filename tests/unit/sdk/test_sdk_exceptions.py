"""The error tree and its one translation boundary."""

from __future__ import annotations

import json

import httpx
import pytest

import sbx.sdk as sdk
from sbx.sdk import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    InvalidRequestError,
    LimitError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    SandboxUnavailableError,
    SbxConnectionError,
    SbxError,
    SbxTimeoutError,
    ServerError,
)
from sbx.sdk._exceptions import (
    CONNECT_ERRORS,
    STATUS_ERRORS,
    error_from_response,
    map_transport_errors,
)


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> SbxError:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, content, httpx.Headers(headers or {}))


def test_every_sdk_error_has_one_root() -> None:
    errors = [v for v in vars(sdk).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(errors) >= 14
    assert all(issubclass(e, SbxError) for e in errors)


def test_builtin_aliases() -> None:
    assert issubclass(SbxTimeoutError, TimeoutError)
    assert issubclass(SbxConnectionError, ConnectionError)
    assert issubclass(LimitError, ConflictError)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidRequestError), (401, AuthenticationError), (402, PaymentRequiredError),
     (403, PermissionDeniedError), (404, NotFoundError), (409, ConflictError),
     (429, RateLimitError), (500, ServerError), (502, SandboxUnavailableError),
     (503, SandboxUnavailableError), (504, SandboxUnavailableError), (507, ServerError),
     (418, SbxError)],
)
def test_status_table(status: int, error: type[SbxError]) -> None:
    exc = answer(status, {"message": "why"})
    assert type(exc) is error
    assert exc.status_code == status
    assert str(exc) == "why"


def test_status_table_covers_the_api_statuses() -> None:
    assert {400, 401, 404, 409, 429, 503} <= set(STATUS_ERRORS)


@pytest.mark.parametrize(("code", "error"), sorted(CONNECT_ERRORS.items()))
def test_connect_codes_win_over_status(code: str, error: type[SbxError]) -> None:
    exc = answer(500, {"code": code, "message": "m"})
    assert type(exc) is error
    assert exc.code == code


def test_v1_validation_errors_are_kept() -> None:
    exc = answer(400, {"message": "Invalid request", "errors": [
        {"field": "memory_mib", "error": "must be an even number"},
        {"field": "vcpu", "error": "too big"}]})
    assert isinstance(exc, InvalidRequestError)
    assert exc.errors == [{"field": "memory_mib", "error": "must be an even number"},
                          {"field": "vcpu", "error": "too big"}]
    assert str(exc) == "Invalid request: memory_mib: must be an even number; vcpu: too big"


def test_gateway_shape_with_integer_code() -> None:
    exc = answer(404, {"code": 404, "message": "Sandbox sbx-abc not found"})
    assert isinstance(exc, NotFoundError)
    assert str(exc) == "Sandbox sbx-abc not found"


def test_sandbox_limit_is_a_limit_error() -> None:
    assert type(answer(409, {"message": "Sandbox limit reached: 3"})) is LimitError
    assert type(answer(409, {"message": "Sandbox sbx-a is paused"})) is ConflictError


def test_retry_after_is_read() -> None:
    exc = answer(429, {"message": "slow down"}, {"Retry-After": "7"})
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 7.0


@pytest.mark.parametrize("body", [b"", b"<html>Bad Gateway</html>", b"[1, 2]"])
def test_non_json_or_odd_bodies(body: bytes) -> None:
    exc = answer(502, body)
    assert isinstance(exc, SandboxUnavailableError)
    assert str(exc)


@pytest.mark.parametrize(
    ("raised", "error"),
    [(httpx.ConnectError("refused"), SbxConnectionError),
     (httpx.ReadTimeout("slow"), SbxTimeoutError),
     (httpx.ConnectTimeout("slow"), SbxTimeoutError),
     (httpx.RemoteProtocolError("bad"), SbxConnectionError),
     (httpx.ReadError("reset"), SbxConnectionError)],
)
def test_transport_errors_are_mapped(raised: Exception, error: type[SbxError]) -> None:
    with pytest.raises(error, match="http://x") as info, map_transport_errors("http://x"):
        raise raised
    assert info.value.__cause__ is raised


def test_sdk_errors_pass_the_boundary_unchanged() -> None:
    original = NotFoundError("gone")
    with pytest.raises(NotFoundError) as info, map_transport_errors():
        raise original
    assert info.value is original


def test_command_exit_error_carries_the_result() -> None:
    exc = CommandExitError("out", "line1\nfatal: no\n", 2, "exit status 2")
    assert (exc.stdout, exc.stderr, exc.exit_code, exc.error) == (
        "out", "line1\nfatal: no\n", 2, "exit status 2")
    assert "code 2" in str(exc)
    assert "fatal: no" in str(CommandExitError("", "x\nfatal: no\n", 1, None))
