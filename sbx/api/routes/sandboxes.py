"""`/sandboxes` and `/v2/sandboxes`: the seed-002 API and the E2B SDK's
control plane, over the same service as `/v1/sandbox`. Answers carry both
sets of names (seed 002's snake_case and E2B's camelCase), so either client
reads them; errors are `{"code", "message"}`."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sbx.api.contract import body, query
from sbx.api.deps import Caller, platform
from sbx.api.schemas.answers import Sandbox002
from sbx.api.schemas.sandboxes import (
    ConnectE2b,
    CreateSandbox002,
    CreateSandboxE2b,
    SetTimeout002,
)
from sbx.core.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
)
from sbx.core.limits import LimitReached
from sbx.core.sandboxes import CreateSpec, SandboxService
from sbx.core.security import parse_security
from sbx.core.templates import BASE
from sbx.core.validation import parse, peek_json
from sbx.envd import ENVD_VERSION
from sbx.shared.lifecycle import SandboxState
from sbx.shared.policy import NetworkPolicy, default_policy
from sbx.store.models import Sandbox

router = APIRouter(tags=["sandboxes (seed 002, E2B)"])
S = SandboxState
ENVD_PORT = 49983
# E2B knows two states; sbx's passing ones read as the state they came from.
_PUBLIC_STATE = {
    S.STARTING: "running", S.RUNNING: "running", S.SNAPSHOTTING: "running",
    S.UNPAUSING: "paused", S.PAUSED: "paused", S.DELETING: "running",
    S.KILLED: "killed", S.DELETED: "deleted",
}
_FAR = timedelta(days=3650)
# Connect answers 200 for a running sandbox, 201 for one it resumed.
_CONNECTED: dict[int | str, dict[str, Any]] = {
    201: {"model": Sandbox002, "description": "Resumed"}}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def out(service: SandboxService, row: Sandbox, secrets: bool = True) -> dict[str, Any]:
    name = row.template_id.removeprefix("tpl-")
    extra = row.extra or {}
    policy = NetworkPolicy.model_validate(row.network_policy, strict=False)
    body: dict[str, Any] = {
        # seed 002
        "id": row.id,
        "template_id": row.template_id,
        "name": name,
        "state": _PUBLIC_STATE.get(S(row.state), row.state),
        "internal_ip": service.address(row) if row.ip_slot is not None else None,
        "envd_port": ENVD_PORT,
        "created_at": _iso(row.created_at),
        "metadata": extra.get("metadata") or {},
        "timeout": row.timeout_s or 0,
        "on_timeout": extra.get("on_timeout", "kill"),
        "network": policy.public(),
        "security": extra.get("security"),
        "vcpu": row.vcpu,
        "memory_mib": row.memory_mib,
        "disk_mib": row.disk_mib,
        # E2B
        "sandboxID": row.id,
        "templateID": row.template_id,
        "alias": name,
        "clientID": "sbx",
        "envdVersion": ENVD_VERSION,
        "startedAt": _iso(row.created_at),
        "endAt": _iso(row.timeout_at or (row.ended_at or datetime.now(UTC) + _FAR)),
        "cpuCount": row.vcpu,
        "memoryMB": row.memory_mib,
        "diskSizeMB": row.disk_mib,
        "trafficAccessToken": None,
        "domain": None,
        "lifecycle": {"autoResume": False,
                      "onTimeout": "pause" if row.auto_pause else "kill"},
    }
    if secrets:
        body["envd_access_token"] = row.envd_token
        body["envdAccessToken"] = row.envd_token
        body["security_proxy_token"] = row.proxy_token
    return body


def _is_e2b(data: Any) -> bool:
    return isinstance(data, dict) and "templateID" in data


def _spec_002(raw: bytes, data: Any) -> CreateSpec:
    if isinstance(data, dict) and "resources" in data:
        raise Forbidden(
            "Resources (vCPU, memory, disk) are fixed by the template; the request-level "
            "`resources` field is not accepted"
        )
    req = parse(CreateSandbox002, raw)
    security, guard = None, False
    if req.security is not None:
        security, parsed = parse_security(req.security)
        guard = parsed.guardrails
    return CreateSpec(
        template=req.template or BASE,
        timeout_s=req.timeout or None,
        auto_pause=req.on_timeout == "pause",
        network_policy=req.network or default_policy(),
        env_vars=req.envs,
        surface="sandboxes",
        metadata=req.metadata,
        on_timeout=req.on_timeout,
        security=security,
        guardrails=guard,
        check_session=True,
        template_field="template",
    )


def _spec_e2b(raw: bytes) -> CreateSpec:
    req = parse(CreateSandboxE2b, raw)
    return CreateSpec(
        template=req.template_id or BASE,
        timeout_s=req.timeout or None,
        auto_pause=req.auto_pause,
        network_policy=req.network_policy(),
        env_vars=req.env_vars or {},
        surface="e2b",
        metadata=req.metadata or {},
        on_timeout="pause" if req.auto_pause else "kill",
        check_session=True,
        template_field="templateID",
    )


async def _create(request: Request, caller: Caller, e2b_only: bool) -> JSONResponse:
    raw = await request.body()
    peek = peek_json(raw)
    spec = _spec_e2b(raw) if (e2b_only or _is_e2b(peek)) else _spec_002(raw, peek)
    platform(request).check_ready()
    service = platform(request).sandboxes
    try:
        row = await service.create(caller.id, spec)
    except LimitReached as exc:
        raise RateLimited(exc.message, retry_after=30, should_retry=False) from None
    return JSONResponse(out(service, row), status_code=201)


@router.post("/sandboxes", status_code=201, response_model=Sandbox002,
             openapi_extra=body(CreateSandbox002, CreateSandboxE2b))
async def create(request: Request, caller: Caller) -> JSONResponse:
    return await _create(request, caller, e2b_only=False)


@router.post("/v2/sandboxes", status_code=201, response_model=Sandbox002,
             openapi_extra=body(CreateSandboxE2b))
async def create_v2(request: Request, caller: Caller) -> JSONResponse:
    return await _create(request, caller, e2b_only=True)


def _metadata_filter(value: str | None) -> dict[str, str]:
    # E2B sends `metadata=k%3Dv%26k2%3Dv2`: one URL-encoded query string.
    if not value:
        return {}
    return dict(parse_qsl(value, keep_blank_values=True))


def _cursor(row: Sandbox) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


async def _list(request: Request, caller: Caller, default_states: list[str]) -> JSONResponse:
    q = request.query_params
    states = [s for s in q.get("state", "").split(",") if s] or default_states
    for s in states:
        if s not in {*S, "killed"}:
            raise InvalidRequest([FieldError("state", f"unknown state {s!r}")])
    if "running" in states:
        states += [S.STARTING, S.DELETING]
    if "paused" in states:
        states += [S.SNAPSHOTTING, S.UNPAUSING]
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise InvalidRequest([FieldError("limit", "must be an integer")]) from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest([FieldError("limit", "must be between 1 and 1000")])
    meta = _metadata_filter(q.get("metadata"))
    service = platform(request).sandboxes
    rows = [
        r for r in await service.list(caller.id, sorted(set(states)))
        if all((r.extra or {}).get("metadata", {}).get(k) == v for k, v in meta.items())
    ]
    token = q.get("nextToken")
    if token:
        rows = [r for r in rows if _cursor(r) > token]
    page = rows[:limit]
    headers = {"x-next-token": _cursor(page[-1])} if len(rows) > limit else {}
    return JSONResponse([out(service, r, secrets=False) for r in page], headers=headers)


_LIST = query(
    state=({"type": "string"}, "comma-separated states (default running,paused)"),
    limit=({"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 1000)"),
    metadata=({"type": "string"}, "URL-encoded k=v pairs that must all match"),
    nextToken=({"type": "string"}, "the x-next-token header of the previous page"),
)


@router.get("/sandboxes", response_model=list[Sandbox002], openapi_extra=_LIST)
async def list_(request: Request, caller: Caller) -> JSONResponse:
    return await _list(request, caller, ["running", "paused"])


@router.get("/v2/sandboxes", response_model=list[Sandbox002], openapi_extra=_LIST)
async def list_v2(request: Request, caller: Caller) -> JSONResponse:
    return await _list(request, caller, ["running", "paused"])


async def _visible(request: Request, caller: Caller, sandbox_id: str) -> Sandbox:
    """The sandbox as this surface shows it: one the E2B SDK made is gone
    (404) once it ended, as on E2B; seed 002 keeps showing `killed`."""
    row = await platform(request).sandboxes.get(caller.id, sandbox_id)
    ended = row.state in (S.DELETED, S.KILLED)
    if ended and (row.extra or {}).get("surface") != "sandboxes":
        raise NotFound(f"Sandbox {sandbox_id} not found")
    return row


@router.get("/sandboxes/{sandbox_id}", response_model=Sandbox002)
async def get(sandbox_id: str, request: Request, caller: Caller) -> JSONResponse:
    row = await _visible(request, caller, sandbox_id)
    return JSONResponse(out(platform(request).sandboxes, row))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def delete(sandbox_id: str, request: Request, caller: Caller) -> Response:
    row = await _visible(request, caller, sandbox_id)
    if row.state not in (S.DELETED, S.KILLED):
        await platform(request).sandboxes.delete(caller.id, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204,
             openapi_extra=body(SetTimeout002))
async def set_timeout(sandbox_id: str, request: Request, caller: Caller) -> Response:
    await _visible(request, caller, sandbox_id)
    req = parse(SetTimeout002, await request.body())
    await platform(request).sandboxes.set_timeout(caller.id, sandbox_id, req.timeout)
    return Response(status_code=204)


async def _connect(request: Request, caller: Caller, sandbox_id: str) -> JSONResponse:
    """E2B connect: 200 if it was running, 201 if it was resumed."""
    row = await _visible(request, caller, sandbox_id)
    raw = await request.body()
    req = parse(ConnectE2b, raw) if raw.strip() else ConnectE2b()
    service = platform(request).sandboxes
    resumed = False
    if row.state in (S.PAUSED, S.SNAPSHOTTING, S.UNPAUSING):
        row, resumed = await service.resume(caller.id, sandbox_id)
    if req.timeout:
        # Connecting never shortens a sandbox's life.
        left = (row.timeout_at - datetime.now(UTC)).total_seconds() if row.timeout_at else None
        if left is None or left < req.timeout:
            row = await service.set_timeout(caller.id, sandbox_id, req.timeout)
    return JSONResponse(out(service, row), status_code=201 if resumed else 200)


@router.post("/v2/sandboxes/{sandbox_id}/connect", response_model=Sandbox002,
             responses=_CONNECTED, openapi_extra=body(ConnectE2b, required=False))
async def connect_v2(sandbox_id: str, request: Request, caller: Caller) -> JSONResponse:
    return await _connect(request, caller, sandbox_id)


@router.post("/sandboxes/{sandbox_id}/connect", response_model=Sandbox002,
             responses=_CONNECTED, openapi_extra=body(ConnectE2b, required=False))
async def connect(sandbox_id: str, request: Request, caller: Caller) -> JSONResponse:
    return await _connect(request, caller, sandbox_id)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(sandbox_id: str, request: Request, caller: Caller) -> Response:
    """204 once paused; 409 when it already is (the E2B SDK reads that as
    "already paused")."""
    await _visible(request, caller, sandbox_id)
    await platform(request).sandboxes.pause(caller.id, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201, response_model=Sandbox002,
             openapi_extra=body(ConnectE2b, required=False))
async def resume(sandbox_id: str, request: Request, caller: Caller) -> JSONResponse:
    """201 with the sandbox once running again; 409 if it was not paused."""
    await _visible(request, caller, sandbox_id)
    raw = await request.body()
    req = parse(ConnectE2b, raw) if raw.strip() else ConnectE2b()
    service = platform(request).sandboxes
    row, resumed = await service.resume(caller.id, sandbox_id, req.timeout)
    if not resumed:
        raise Conflict(f"Sandbox {sandbox_id} is not paused")
    return JSONResponse(out(service, row), status_code=201)
