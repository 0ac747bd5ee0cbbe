"""Organisations and API keys."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core import ids
from sbx.core.errors import Conflict, NotFound, Unauthorized
from sbx.store import repo
from sbx.store.models import ApiKey, GuardrailUsage, Org, Tier


async def create_org(
    s: AsyncSession, name: str, tier: str = "default",
    sandbox_balance: float | None = None, guardrails_balance: float | None = None,
) -> Org:
    if not name or len(name) > 200:
        raise ValueError("organisation name must be 1-200 characters")
    if await repo.org_by_name(s, name) is not None:
        raise Conflict(f"organisation {name!r} already exists")
    row = await s.get(Tier, tier)
    if row is None:
        raise NotFound(f"no tier named {tier!r}")
    org = Org(id="org_" + secrets.token_hex(8), name=name, max_sandboxes=row.max_sandboxes,
              tier=tier, sandbox_balance=sandbox_balance,
              guardrails_balance=guardrails_balance, created_at=repo.now())
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


async def _org(s: AsyncSession, name: str) -> Org:
    org = await repo.org_by_name(s, name)
    if org is None:
        raise NotFound(f"no organisation named {name!r}")
    return org


async def set_org(s: AsyncSession, name: str, tier: str | None = None) -> None:
    org = await _org(s, name)
    if tier is not None:
        if await s.get(Tier, tier) is None:
            raise NotFound(f"no tier named {tier!r}")
        org.tier = tier


TIER_FIELDS = ("max_sandboxes", "max_vcpu", "max_memory_mib", "max_disk_mib",
               "max_session_s", "creates_per_minute")


def tier_dict(t: Tier) -> dict[str, Any]:
    return {"name": t.name, **{f: getattr(t, f) for f in TIER_FIELDS}}


async def set_tier(s: AsyncSession, name: str, no_session_limit: bool = False,
                   **limits: int | None) -> dict[str, Any]:
    for key, value in limits.items():
        if key not in TIER_FIELDS:
            raise ValueError(f"unknown tier field {key}")
        if value is not None and value < 0:
            raise ValueError(f"{key} must not be negative")
    tier = await s.get(Tier, name)
    if tier is None:
        base = await s.get(Tier, "default")
        assert base is not None
        tier = Tier(name=name, **{f: getattr(base, f) for f in TIER_FIELDS})
        s.add(tier)
    for key, value in limits.items():
        if value is not None:
            setattr(tier, key, value)
    if no_session_limit:
        tier.max_session_s = None
    await s.flush()
    return tier_dict(tier)


async def list_tiers(s: AsyncSession) -> list[dict[str, Any]]:
    return [tier_dict(t) for t in (await s.execute(select(Tier).order_by(Tier.name))).scalars()]


def _wallet_attr(which: str) -> str:
    if which not in ("sandbox", "guardrails"):
        raise ValueError("wallet must be sandbox or guardrails")
    return f"{which}_balance"


async def set_wallet(s: AsyncSession, org_name: str, which: str, value: float | None) -> None:
    setattr(await _org(s, org_name), _wallet_attr(which), value)


async def topup(s: AsyncSession, org_name: str, which: str, amount: float) -> float:
    if amount <= 0:
        raise ValueError("a top-up must be positive")
    org = await _org(s, org_name)
    attr = _wallet_attr(which)
    value = (getattr(org, attr) or 0.0) + amount
    setattr(org, attr, value)
    return value


async def guardrail_usage(s: AsyncSession, org_name: str) -> dict[str, int]:
    """Guardrail checks of an organisation by UTC day (what its guardrails
    wallet is charged for)."""
    org = await repo.org_by_name(s, org_name)
    if org is None:
        raise NotFound(f"no organisation named {org_name!r}")
    rows = (await s.execute(
        select(GuardrailUsage.day, GuardrailUsage.checks)
        .where(GuardrailUsage.org_id == org.id).order_by(GuardrailUsage.day)
    )).tuples().all()
    return dict(rows)
