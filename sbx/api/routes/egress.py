"""Egress routes on the seed-000 surface: replace a sandbox's network policy
at runtime, and read its egress audit log."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sbx.api.contract import body
from sbx.api.deps import Caller, api_key, org, platform
from sbx.api.routes.v1_sandbox import ERRORS, out
from sbx.api.schemas.answers import AuditPage
from sbx.api.schemas.v1 import SandboxOut
from sbx.core.audit import entry_out
from sbx.core.errors import FieldError, InvalidRequest, NotFound
from sbx.core.validation import parse
from sbx.shared.policy import NetworkPolicy
from sbx.store import audit as audit_repo

router = APIRouter(prefix="/v1/sandbox", tags=["egress (v1)"])
router_002 = APIRouter(tags=["sandboxes (seed 002, E2B)"])

PROXY_TOKEN_HEADER = "x-security-proxy-token"
MAX_LIMIT = 1000


@router.put("/{sandbox_id}/network_policy", responses=ERRORS, response_model=SandboxOut,
            openapi_extra=body(NetworkPolicy))
async def set_network_policy(sandbox_id: str, request: Request, caller: Caller
                             ) -> dict[str, object]:
    """Replace a running (or paused) sandbox's network policy; it applies
    within a second, without a restart. Answers the sandbox as GET does."""
    p = platform(request)
    await p.sandboxes.get(caller.id, sandbox_id)
    policy = parse(NetworkPolicy, await request.body())
    return out(await p.egress.set_policy(caller.id, sandbox_id, policy))


# Entry ids are SQLite integers: a larger cursor cannot name one, and
# cannot be bound to a query either (OverflowError).
_MAX_ID = 2**63 - 1


def _since(value: str | None) -> tuple[int | None, datetime | None]:
    if value is None or value == "":
        return None, None
    # isdigit() alone also takes digits such as "²", which int() refuses.
    if value.isascii() and value.isdigit():
        if len(value) > 19 or int(value) > _MAX_ID:
            raise InvalidRequest([FieldError("since", f"an entry id is at most {_MAX_ID}")])
        return int(value), None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here: a time at the ends of datetime's range whose offset
        # crosses them (0001-01-01T00:00+01:00) cannot be.
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest([FieldError(
            "since", "must be an entry id (a cursor) or an ISO 8601 time"
        )]) from None
    return None, at


@router.get("/{sandbox_id}/audit", responses=ERRORS, response_model=AuditPage)
async def read_audit(sandbox_id: str, request: Request, since: str | None = None,
                     limit: int = 100) -> JSONResponse:
    """The sandbox's egress attempts, oldest first. Authorised by the
    organisation's API key, or by the sandbox's security-proxy token in
    `X-Security-Proxy-Token`. Page on with `since=<next_since>`."""
    return await audit_page(request, sandbox_id, since, limit)


@router_002.get("/sandboxes/{sandbox_id}/audit", response_model=AuditPage)
async def read_audit_002(sandbox_id: str, request: Request, since: str | None = None,
                         limit: int = 100) -> JSONResponse:
    """The same log on the seed-002 surface (errors as `{code, message}`),
    where the security-proxy token is handed out."""
    return await audit_page(request, sandbox_id, since, limit)


async def audit_page(request: Request, sandbox_id: str, since: str | None, limit: int
                     ) -> JSONResponse:
    p = platform(request)
    token = request.headers.get(PROXY_TOKEN_HEADER)
    if token is not None and api_key(request) is None:
        row = await p.sandboxes.get(None, sandbox_id)
        if not hmac.compare_digest(token.strip().encode(), row.proxy_token.encode()):
            # The same answer as for an unknown sandbox: a token tells
            # nothing about other sandboxes.
            raise NotFound(f"Sandbox {sandbox_id} not found")
    else:
        caller = await org(request)
        await p.sandboxes.get(caller.id, sandbox_id)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest([FieldError("limit", f"must be between 1 and {MAX_LIMIT}")])
    after_id, at = _since(since)
    rows = await audit_repo.read(p.db, sandbox_id, after_id=after_id, since=at, limit=limit)
    entries = [entry_out(r) for r in rows]
    next_since = entries[-1]["id"] if entries else (after_id if after_id is not None else since)
    return JSONResponse({"sandbox_id": sandbox_id, "entries": entries, "next_since": next_since})
