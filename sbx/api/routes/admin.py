"""`/admin/...`: organisations and API keys over HTTP, for a key with role
admin (a member key gets 403, no key or a bad one 401). Errors are seed
002's `{"code", "message"}`. Keys are listed by prefix only; a new key's
plaintext is in the answer that made it, and nowhere else."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sbx.api.contract import body
from sbx.api.deps import AdminCaller, platform
from sbx.api.schemas.answers import KeyCreated, KeyOut, OrgCreated, OrgOut
from sbx.core import accounts
from sbx.core.errors import FieldError, InvalidRequest, NotFound
from sbx.core.pool import POOL_ORG
from sbx.core.validation import parse
from sbx.store import repo
from sbx.store.models import Org

router = APIRouter(prefix="/admin", tags=["admin"])

# Ten years: a key meant to outlive that should not expire at all.
MAX_EXPIRES_IN_S = 10 * 366 * 24 * 3600
# Answers that carry a key's plaintext are not to be kept by any cache.
_NO_STORE = {"Cache-Control": "no-store"}


class CreateOrg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=200,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    tier: Annotated[str, Field(min_length=1, max_length=64)] = "default"


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    org: Annotated[str, Field(min_length=1, max_length=200)]
    role: Literal["member", "admin"] = "member"
    # None: the key does not expire.
    expires_in_s: Annotated[int, Field(ge=1, le=MAX_EXPIRES_IN_S)] | None = None


def org_out(o: Org) -> dict[str, Any]:
    return {"id": o.id, "name": o.name, "tier": o.tier,
            "created_at": o.created_at.isoformat().replace("+00:00", "Z")}


@router.get("/orgs", response_model=list[OrgOut])
async def list_orgs(request: Request, caller: AdminCaller) -> JSONResponse:
    """Every organisation (name, id, tier), oldest first."""
    async with platform(request).db.session() as s:
        rows = await repo.orgs(s)
    return JSONResponse([org_out(o) for o in rows if o.name != POOL_ORG])


@router.post("/orgs", status_code=201, response_model=OrgCreated,
             openapi_extra=body(CreateOrg))
async def create_org(request: Request, caller: AdminCaller) -> JSONResponse:
    """A new organisation and its first (member) key, whose plaintext is
    in this answer only. 409 if the name is taken."""
    req = parse(CreateOrg, await request.body())
    async with platform(request).db.transaction() as s:
        try:
            org = await accounts.create_org(s, req.name, tier=req.tier)
        except NotFound as exc:  # the tier
            raise InvalidRequest([FieldError("tier", exc.message)]) from None
        key = await accounts.issue_key(s, org.name)
    return JSONResponse({**org_out(org), "key": key}, status_code=201, headers=_NO_STORE)


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(request: Request, caller: AdminCaller, org: str | None = None
                    ) -> JSONResponse:
    """Every key, or those of organisation `org`: id, prefix, role, state
    (active, expired, revoked) and times; never a key or its hash."""
    async with platform(request).db.session() as s:
        rows = await accounts.list_keys(s, org)
    return JSONResponse(rows)


@router.post("/keys", status_code=201, response_model=KeyCreated,
             openapi_extra=body(CreateKey))
async def create_key(request: Request, caller: AdminCaller) -> JSONResponse:
    """A new key for `org`; its plaintext is under `key` in this answer
    only."""
    req = parse(CreateKey, await request.body())
    if req.org == POOL_ORG:
        raise InvalidRequest([FieldError("org", f"no organisation named {req.org!r}")])
    expires_at = (repo.now() + timedelta(seconds=req.expires_in_s)
                  if req.expires_in_s is not None else None)
    async with platform(request).db.transaction() as s:
        try:
            key = await accounts.issue_key(s, req.org, role=req.role, expires_at=expires_at)
        except NotFound as exc:
            raise InvalidRequest([FieldError("org", exc.message)]) from None
    return JSONResponse(key, status_code=201, headers=_NO_STORE)


@router.post("/keys/{key_id}/revoke", status_code=204)
async def revoke_key(key_id: str, request: Request, caller: AdminCaller) -> Response:
    """Revoke a key (by id, or by a prefix that names one key): it stops
    working at once. Revoking a revoked key changes nothing. 404 for no
    such key, 409 for a prefix that several keys share."""
    async with platform(request).db.transaction() as s:
        try:
            await accounts.revoke_key(s, key_id)
        except ValueError as exc:
            raise InvalidRequest([FieldError("id", str(exc))]) from None
    return Response(status_code=204)
