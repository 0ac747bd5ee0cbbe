"""Request dependencies: the platform and the caller's organisation."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sbx.core import accounts
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


async def org(request: Request) -> Org:
    p = platform(request)
    async with p.db.session() as s:
        return await accounts.authenticate(s, api_key(request))


# The calling organisation, for route signatures.
Caller = Annotated[Org, Depends(org)]
