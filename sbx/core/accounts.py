"""Organisations and API keys."""

from __future__ import annotations

import secrets

from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core import ids
from sbx.core.errors import Conflict, NotFound, Unauthorized
from sbx.store import repo
from sbx.store.models import ApiKey, Org


async def create_org(s: AsyncSession, name: str, max_sandboxes: int) -> Org:
    if not name or len(name) > 200:
        raise ValueError("organisation name must be 1-200 characters")
    if await repo.org_by_name(s, name) is not None:
        raise Conflict(f"organisation {name!r} already exists")
    org = Org(id="org_" + secrets.token_hex(8), name=name, max_sandboxes=max_sandboxes,
              created_at=repo.now())
    s.add(org)
    await s.flush()
    return org


async def create_key(s: AsyncSession, org_name: str) -> str:
    """A new key for the organisation; the plaintext exists only in the
    answer, the store keeps its hash."""
    org = await repo.org_by_name(s, org_name)
    if org is None:
        raise NotFound(f"no organisation named {org_name!r}")
    key = ids.api_key()
    s.add(ApiKey(id="key_" + secrets.token_hex(8), org_id=org.id, key_hash=ids.hash_key(key),
                 prefix=key[:12], created_at=repo.now()))
    await s.flush()
    return key


async def authenticate(s: AsyncSession, key: str | None) -> Org:
    if not key:
        raise Unauthorized("Missing API key")
    org = await repo.org_by_key_hash(s, ids.hash_key(key))
    if org is None:
        raise Unauthorized("Invalid API key")
    return org
