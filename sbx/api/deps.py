"""Request dependencies: the platform, the caller's organisation, and the
role of the caller's key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sbx.core import accounts
from sbx.core.accounts import KeyAuth
from sbx.core.errors import Forbidden
from sbx.platform import Platform
from sbx.store.models import Org


def platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


def api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def key_auth(request: Request) -> KeyAuth:
    """The caller's key: its organisation and role (401 when missing,
    unknown, revoked or expired). Kept on request.state.key_auth."""
    p = platform(request)
    async with p.db.session() as s:
        auth = await accounts.authenticate_key(s, api_key(request))
    request.state.key_auth = auth
    return auth


async def org(request: Request) -> Org:
    """The caller's organisation: every route acts on it alone, whatever
    the key's role."""
    return (await key_auth(request)).org


async def admin(request: Request) -> KeyAuth:
    """An admin key (403 for a member key)."""
    auth = await key_auth(request)
    if not auth.is_admin:
        raise Forbidden("admin key required")
    return auth


# The calling organisation, for route signatures.
Caller = Annotated[Org, Depends(org)]
# The caller of an admin route: a key with role admin.
AdminCaller = Annotated[KeyAuth, Depends(admin)]
