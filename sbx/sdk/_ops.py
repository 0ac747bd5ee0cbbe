"""An operation described without doing it: the request to send and how to
read its answer. The sync and async transports both execute the same
:class:`Op`, so every rule about a call lives here once, not in two twins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx

from sbx.sdk._exceptions import ServerError, error_from_response

T = TypeVar("T")


class Target:
    """Which endpoint an operation is for; the transport knows their URLs and headers."""

    API = "api"
    ENVD = "envd"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    target: str = Target.ENVD
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None
    content: bytes | None = None
    # None: the client's default request timeout.
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    request: Request
    # Called with every answer, failed ones included, so that an operation may
    # turn an error into a value (``files.exists`` answers False on 404).
    parse: Callable[[httpx.Response], T]


def raise_for_status(response: httpx.Response) -> None:
    if not response.is_success:
        raise error_from_response(response.status_code, response.content, response.headers)


def json_body(response: httpx.Response) -> object:
    raise_for_status(response)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        snippet = response.content[:200].decode("utf-8", "replace")
        raise ServerError(
            f"Unexpected answer (not JSON): {snippet!r}",
            status_code=response.status_code,
        ) from exc


def iso_datetime(value: Any) -> datetime | None:
    """An ISO 8601 time from an answer; None when absent or unreadable
    (a missing time never fails a whole answer)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
