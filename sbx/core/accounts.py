"""Organisations and API keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core import money
from sbx.core.errors import Conflict, NotFound, Unauthorized
from sbx.shared import ids
from sbx.store import repo
from sbx.store.models import ApiKey, GuardrailUsage, Org, Tier


async def create_org(s: AsyncSession, name: str, tier: str = "default") -> Org:
    if not name or len(name) > 200:
        raise ValueError("organisation name must be 1-200 characters")
    # Two creates of one name at once: the second sees the first's row.
    await repo.write_lock(s, f"org-name:{name}")
    if await repo.org_by_name(s, name) is not None:
        raise Conflict(f"organisation {name!r} already exists")
    row = await s.get(Tier, tier)
    if row is None:
        raise NotFound(f"no tier named {tier!r}")
    org = Org(id="org_" + secrets.token_hex(8), name=name, max_sandboxes=row.max_sandboxes,
              tier=tier, created_at=repo.now())
    s.add(org)
    await s.flush()
    return org


# -- API keys -------------------------------------------------------------------
ROLES = ("member", "admin")
# revoke_key by prefix wants at least this much of it ("sbx_" and 4 more).
MIN_PREFIX = 8


@dataclass(frozen=True)
class KeyAuth:
    """Whom a request's key speaks for: its organisation, in its role."""

    org: Org
    role: str
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t is not None else None


def key_state(k: ApiKey, at: datetime | None = None) -> str:
    """active, expired or revoked (revoked wins)."""
    if k.revoked_at is not None:
        return "revoked"
    if k.expires_at is not None and k.expires_at <= (at or repo.now()):
        return "expired"
    return "active"


def key_dict(k: ApiKey, org_name: str, at: datetime | None = None) -> dict[str, Any]:
    """A key as it is listed: its prefix, never its hash or the key itself."""
    return {"id": k.id, "org": org_name, "prefix": k.prefix, "role": k.role,
            "created_at": _iso(k.created_at), "expires_at": _iso(k.expires_at),
            "revoked_at": _iso(k.revoked_at), "state": key_state(k, at)}


async def issue_key(s: AsyncSession, org_name: str, role: str = "member",
                    expires_at: datetime | None = None) -> dict[str, Any]:
    """A new key for the organisation: its listing, and under "key" the
    plaintext, which exists only in this answer (the store keeps its hash)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = repo.now()
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("the expiry must carry a time zone")
        if expires_at <= now:
            raise ValueError("the expiry must be in the future")
    org = await org_named(s, org_name)
    key = ids.api_key()
    row = ApiKey(id="key_" + secrets.token_hex(8), org_id=org.id, key_hash=ids.hash_key(key),
                 prefix=key[:12], created_at=now, role=role, expires_at=expires_at)
    s.add(row)
    await s.flush()
    return {**key_dict(row, org.name, now), "key": key}


async def create_key(s: AsyncSession, org_name: str, role: str = "member",
                     expires_at: datetime | None = None) -> str:
    """A new key for the organisation; the plaintext exists only in the
    answer, the store keeps its hash."""
    return str((await issue_key(s, org_name, role, expires_at))["key"])


async def authenticate_key(s: AsyncSession, key: str | None) -> KeyAuth:
    """The organisation and role of a key; 401 unless it is known, not
    revoked and not expired."""
    if not key:
        raise Unauthorized("Missing API key")
    found = await repo.key_by_hash(s, ids.hash_key(key))
    if found is None:
        raise Unauthorized("Invalid API key")
    row, org = found
    state = key_state(row)
    if state == "revoked":
        raise Unauthorized("API key revoked")
    if state == "expired":
        raise Unauthorized("API key expired")
    return KeyAuth(org=org, role=row.role, key_id=row.id)


async def authenticate(s: AsyncSession, key: str | None) -> Org:
    return (await authenticate_key(s, key)).org


async def list_keys(s: AsyncSession, org_name: str | None = None) -> list[dict[str, Any]]:
    """Every key (of one organisation, or of all), oldest first, as
    key_dict shows them: prefixes only."""
    org_id = None
    if org_name is not None:
        org_id = (await org_named(s, org_name)).id
    now = repo.now()
    return [key_dict(k, name, now) for k, name in await repo.keys(s, org_id)]


async def revoke_key(s: AsyncSession, id_or_prefix: str) -> dict[str, Any]:
    """Revoke one key, named by its id, its prefix (or a longer start of
    it) or the key itself; it stops working at once. A revoked key stays
    revoked (revoking it again changes nothing). Answers its listing."""
    text = id_or_prefix.strip()
    matches = list(await repo.keys_matching(s, text)) if text else []
    if len(text) > 12 and not any(k.id == text for k, _ in matches):
        found = await repo.key_by_hash(s, ids.hash_key(text))
        if found is not None:  # the whole key
            matches = [(found[0], found[1].name)]
    exact = len(matches) == 1 and matches[0][0].id == text
    if not text or (not exact and len(text) < MIN_PREFIX):
        raise ValueError(f"give a key id, or at least {MIN_PREFIX} characters of a key's prefix")
    if not matches:
        raise NotFound(f"no API key matches {text!r}")
    if len(matches) > 1:
        names = ", ".join(k.id for k, _ in matches[:5])
        more = "" if len(matches) <= 5 else ", ..."
        raise Conflict(f"{text!r} matches {len(matches)} API keys ({names}{more}); "
                       "give the key id")
    row, org_name = matches[0]
    now = repo.now()
    if row.revoked_at is None:
        row.revoked_at = now
        await s.flush()
    return key_dict(row, org_name, now)


async def org_named(s: AsyncSession, name: str) -> Org:
    """The organisation called name, or 404."""
    org = await repo.org_by_name(s, name)
    if org is None:
        raise NotFound(f"no organisation named {name!r}")
    return org


async def set_org(s: AsyncSession, name: str, tier: str | None = None) -> None:
    org = await org_named(s, name)
    if tier is not None:
        if await s.get(Tier, tier) is None:
            raise NotFound(f"no tier named {tier!r}")
        org.tier = tier


TIER_FIELDS = ("max_sandboxes", "max_vcpu", "max_memory_mib", "max_disk_mib",
               "max_session_s", "creates_per_minute")
# Stored in micro-credits per unit; shown and set in credits.
PRICE_FIELDS = ("price_vcpu_s", "price_gib_s", "price_check")


def tier_dict(t: Tier) -> dict[str, Any]:
    return {"name": t.name, **{f: getattr(t, f) for f in TIER_FIELDS},
            **{f: money.to_credits(getattr(t, f)) for f in PRICE_FIELDS}}


async def set_tier(s: AsyncSession, name: str, no_session_limit: bool = False,
                   **limits: int | str | None) -> dict[str, Any]:
    values: dict[str, int] = {}
    for key, value in limits.items():
        if value is None:
            continue
        if key in PRICE_FIELDS:
            values[key] = money.to_micro(value)
        elif key in TIER_FIELDS:
            values[key] = int(value)
        else:
            raise ValueError(f"unknown tier field {key}")
        if values[key] < 0:
            raise ValueError(f"{key} must not be negative")
    tier = await s.get(Tier, name)
    if tier is None:
        base = await s.get(Tier, "default")
        assert base is not None
        tier = Tier(name=name, **{f: getattr(base, f) for f in TIER_FIELDS + PRICE_FIELDS})
        s.add(tier)
    for key, value in values.items():
        setattr(tier, key, value)
    if no_session_limit:
        tier.max_session_s = None
    await s.flush()
    return tier_dict(tier)


async def list_tiers(s: AsyncSession) -> list[dict[str, Any]]:
    return [tier_dict(t) for t in (await s.execute(select(Tier).order_by(Tier.name))).scalars()]


async def guardrail_usage(s: AsyncSession, org_name: str) -> dict[str, int]:
    """Guardrail checks of an organisation by UTC day (what its guardrails
    wallet is charged for)."""
    org = await org_named(s, org_name)
    rows = (await s.execute(
        select(GuardrailUsage.day, GuardrailUsage.checks)
        .where(GuardrailUsage.org_id == org.id).order_by(GuardrailUsage.day)
    )).tuples().all()
    return dict(rows)
