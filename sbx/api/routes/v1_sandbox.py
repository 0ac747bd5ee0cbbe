"""Seed 000: `/v1/sandbox/` and its siblings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sbx.api.contract import body
from sbx.api.deps import Caller, platform
from sbx.api.schemas.v1 import CreateSandbox, SandboxOut, SetTimeout
from sbx.core.sandboxes import CreateSpec
from sbx.core.validation import parse
from sbx.shared.lifecycle import LIVE, SandboxState
from sbx.shared.policy import NetworkPolicy, default_policy
from sbx.store.models import Sandbox

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox (v1)"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Validation error: {message, errors: [{field, error}]}"},
    401: {"description": "Invalid or missing API key: {message}"},
    409: {"description": "Sandbox limit reached: {message}"},
}


def out(row: Sandbox, with_token: bool = True) -> dict[str, object]:
    policy = NetworkPolicy.model_validate(row.network_policy, strict=False)
    return SandboxOut(
        id=row.id,
        template_id=row.template_id,
        vcpu=row.vcpu,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        state=row.state,
        auto_pause=row.auto_pause,
        network_policy=policy.public(),
        created_at=row.created_at,
        # An ended sandbox has nothing left to reach: no token for it.
        envd_access_token=row.envd_token if with_token and row.state in LIVE else None,
        timeout_min=(row.timeout_s // 60) if row.timeout_s else None,
        timeout_at=row.timeout_at,
    ).model_dump(mode="json")


@router.post("/", status_code=201, responses=ERRORS, response_model=SandboxOut,
             openapi_extra=body(CreateSandbox))
async def create(request: Request, caller: Caller) -> JSONResponse:
    req = parse(CreateSandbox, await request.body())
    spec = CreateSpec(
        template=req.template_name,
        vcpu=req.vcpu,
        memory_mib=req.memory_mib,
        timeout_s=req.timeout_min * 60,
        auto_pause=req.auto_pause,
        network_policy=req.network_policy or default_policy(),
        env_vars=req.env_vars,
        surface="v1",
    )
    platform(request).check_ready()
    row = await platform(request).sandboxes.create(caller.id, spec)
    return JSONResponse(out(row), status_code=201)


@router.get("/", responses=ERRORS, response_model=list[SandboxOut])
async def list_(request: Request, caller: Caller, state: str | None = None
                ) -> list[dict[str, object]]:
    states = [s for s in state.split(",") if s] if state else [
        s for s in SandboxState if s not in (SandboxState.DELETED, SandboxState.KILLED)
    ]
    rows = await platform(request).sandboxes.list(caller.id, states)
    return [out(r, with_token=False) for r in rows]


@router.get("/{sandbox_id}", responses=ERRORS, response_model=SandboxOut)
async def get(sandbox_id: str, request: Request, caller: Caller) -> dict[str, object]:
    return out(await platform(request).sandboxes.get(caller.id, sandbox_id))


@router.delete("/{sandbox_id}", responses=ERRORS, response_model=SandboxOut)
async def delete(sandbox_id: str, request: Request, caller: Caller
                 ) -> dict[str, object]:
    return out(await platform(request).sandboxes.delete(caller.id, sandbox_id), with_token=False)


@router.post("/{sandbox_id}/timeout", responses=ERRORS, response_model=SandboxOut,
             openapi_extra=body(SetTimeout))
async def set_timeout(sandbox_id: str, request: Request, caller: Caller
                      ) -> dict[str, object]:
    p = platform(request)
    await p.sandboxes.get(caller.id, sandbox_id)
    req = parse(SetTimeout, await request.body())
    return out(await p.sandboxes.set_timeout(caller.id, sandbox_id, req.timeout_min * 60))


@router.post("/{sandbox_id}/pause", responses=ERRORS, response_model=SandboxOut)
async def pause(sandbox_id: str, request: Request, caller: Caller) -> dict[str, object]:
    """Snapshot memory, processes and disk; free the host. 409 if paused."""
    return out(await platform(request).sandboxes.pause(caller.id, sandbox_id))


@router.post("/{sandbox_id}/resume", responses=ERRORS, response_model=SandboxOut)
async def resume(sandbox_id: str, request: Request, caller: Caller) -> dict[str, object]:
    """Bring a paused sandbox back, same id, tokens, env and address."""
    row, _ = await platform(request).sandboxes.resume(caller.id, sandbox_id)
    return out(row)
