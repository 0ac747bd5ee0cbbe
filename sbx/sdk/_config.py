"""Where the SDK finds the server, and the unit conversions the API imposes."""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from sbx.sdk._exceptions import AuthenticationError, InvalidRequestError

API_URL_ENV = "SBX_API_URL"
API_KEY_ENV = "SBX_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:3000"

ENVD_PORT = 49983
# Plain API calls; creating a sandbox waits for its envd, so it gets longer.
REQUEST_TIMEOUT = 60.0
CREATE_TIMEOUT = 180.0
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach the control plane: argument, then environment, then default."""

    api_url: str
    api_key: str | None = field(default=None, repr=False)
    request_timeout: float = REQUEST_TIMEOUT

    @classmethod
    def resolve(
        cls,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ConnectionConfig:
        environ = os.environ if env is None else env
        url = api_url or environ.get(API_URL_ENV) or DEFAULT_API_URL
        key = api_key or environ.get(API_KEY_ENV) or None
        return cls(
            api_url=url.rstrip("/"),
            api_key=key,
            request_timeout=REQUEST_TIMEOUT if request_timeout is None else request_timeout,
        )

    def api_headers(self) -> dict[str, str]:
        if not self.api_key:
            raise AuthenticationError(
                f"No API key: pass api_key=... or set {API_KEY_ENV}"
            )
        return {"X-API-Key": self.api_key}


def envd_headers(sandbox_id: str, access_token: str | None) -> dict[str, str]:
    """Headers that make the server's gateway route a request to the sandbox's envd."""
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT)}
    if access_token:
        headers["X-Access-Token"] = access_token
    return headers


def envd_user_header(user: str | None) -> dict[str, str]:
    """envd takes the user to act as from HTTP Basic auth with an empty password."""
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def timeout_minutes(seconds: float) -> int:
    """The API counts sandbox timeouts in whole minutes; round up, at least one."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequestError(
            f"timeout must be a non-negative number of seconds, got {seconds!r}",
            errors=[{"field": "timeout", "error": "must be a non-negative number of seconds"}],
        )
    return max(1, math.ceil(seconds / 60))


def http_timeout(request_timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(request_timeout, connect=CONNECT_TIMEOUT)
