"""The control plane (``/v1/sandbox/``) as operations (sans-IO)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from sbx.sdk._config import CREATE_TIMEOUT, timeout_minutes
from sbx.sdk._exceptions import ServerError
from sbx.sdk._models import SandboxInfo
from sbx.sdk._ops import Op, Request, Target, iso_datetime, json_body

PREFIX = "/v1/sandbox/"
_JSON = {"Content-Type": "application/json"}


def create(
    template: str,
    vcpu: int,
    memory_mib: int,
    timeout: float,
    env_vars: Mapping[str, str] | None,
    network_policy: Mapping[str, Any] | None,
    auto_pause: bool,
) -> Op[SandboxInfo]:
    body: dict[str, Any] = {
        "template_name": template,
        "vcpu": vcpu,
        "memory_mib": memory_mib,
        "timeout_min": timeout_minutes(timeout),
        "auto_pause": auto_pause,
    }
    if env_vars:
        body["env_vars"] = dict(env_vars)
    if network_policy is not None:
        body["network_policy"] = dict(network_policy)
    request = Request(
        "POST", PREFIX, Target.API, _JSON, content=_dumps(body), timeout=CREATE_TIMEOUT
    )
    return Op(request, _one)


def list_sandboxes(states: list[str] | None = None) -> Op[list[SandboxInfo]]:
    params = {"state": ",".join(states)} if states else None

    def parse(response: httpx.Response) -> list[SandboxInfo]:
        body = json_body(response)
        if not isinstance(body, list):
            raise ServerError("The server answered a list with something else")
        return [sandbox_info(item) for item in body]

    return Op(Request("GET", PREFIX, Target.API, params=params), parse)


def get(sandbox_id: str) -> Op[SandboxInfo]:
    return Op(Request("GET", PREFIX + _quote(sandbox_id), Target.API), _one)


def delete(sandbox_id: str) -> Op[SandboxInfo]:
    return Op(Request("DELETE", PREFIX + _quote(sandbox_id), Target.API), _one)


def set_timeout(sandbox_id: str, timeout: float) -> Op[SandboxInfo]:
    body = {"timeout_min": timeout_minutes(timeout)}
    path = PREFIX + _quote(sandbox_id) + "/timeout"
    return Op(Request("POST", path, Target.API, _JSON, content=_dumps(body)), _one)


def pause(sandbox_id: str) -> Op[SandboxInfo]:
    path = PREFIX + _quote(sandbox_id) + "/pause"
    return Op(Request("POST", path, Target.API, _JSON, content=b"{}"), _one)


def resume(sandbox_id: str) -> Op[SandboxInfo]:
    path = PREFIX + _quote(sandbox_id) + "/resume"
    return Op(Request("POST", path, Target.API, _JSON, content=b"{}"), _one)


def _one(response: httpx.Response) -> SandboxInfo:
    body = json_body(response)
    if not isinstance(body, dict):
        raise ServerError("The server answered with something other than a sandbox")
    return sandbox_info(body)


def sandbox_info(data: Mapping[str, Any]) -> SandboxInfo:
    try:
        return SandboxInfo(
            sandbox_id=str(data["id"]),
            template_id=str(data.get("template_id") or ""),
            state=str(data.get("state") or ""),
            vcpu=int(data.get("vcpu") or 0),
            memory_mib=int(data.get("memory_mib") or 0),
            disk_mib=int(data.get("disk_mib") or 0),
            auto_pause=bool(data.get("auto_pause", False)),
            created_at=iso_datetime(data.get("created_at")),
            timeout_at=iso_datetime(data.get("timeout_at")),
            timeout_min=data.get("timeout_min"),
            network_policy=dict(data.get("network_policy") or {}),
            envd_access_token=data.get("envd_access_token"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"The server described a sandbox in an unexpected shape: {exc}") from exc


def _quote(sandbox_id: str) -> str:
    # Whatever the caller passes as an id must not be able to change the path.
    return quote(sandbox_id, safe="")


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def usage(since: str | None = None, until: str | None = None) -> Op[dict[str, Any]]:
    """GET /v1/usage: days since..until (YYYY-MM-DD, UTC; the server's
    default is the last 30 days)."""
    params = {k: v for k, v in (("from", since), ("to", until)) if v}

    def parse(response: httpx.Response) -> dict[str, Any]:
        body = json_body(response)
        if not isinstance(body, dict) or "totals" not in body:
            raise ServerError("The server answered usage with something else")
        return body

    return Op(Request("GET", "/v1/usage", Target.API, params=params or None), parse)
