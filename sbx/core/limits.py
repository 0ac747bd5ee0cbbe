"""Tier limits, wallets and the create rate, checked inside the create's
transaction (under the organisation's lock) so that concurrent creates can
never pass a limit together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core.errors import Conflict, Forbidden, RateLimited
from sbx.shared.lifecycle import LIVE
from sbx.store import repo
from sbx.store.models import CreateLog, Org, Template, Tier

RATE_WINDOW = timedelta(minutes=1)


class LimitReached(Conflict):
    """The organisation holds as many sandboxes as its tier allows (409 on
    seed 000, 429 on seed 002)."""


@dataclass(frozen=True)
class Request:
    vcpu: int
    memory_mib: int
    disk_mib: int
    timeout_s: int | None
    guardrails: bool


async def tier_of(s: AsyncSession, org: Org) -> Tier:
    tier = await s.get(Tier, org.tier)
    if tier is None:
        raise Forbidden(f"organisation {org.name!r} has an unknown tier {org.tier!r}")
    return tier


def check_size(tier: Tier, req: Request, check_session: bool) -> None:
    """403 when the sandbox is bigger, or would live longer, than the tier."""
    over = []
    if req.vcpu > tier.max_vcpu:
        over.append(f"vcpu {req.vcpu} > {tier.max_vcpu}")
    if req.memory_mib > tier.max_memory_mib:
        over.append(f"memory {req.memory_mib} MiB > {tier.max_memory_mib} MiB")
    if req.disk_mib > tier.max_disk_mib:
        over.append(f"disk {req.disk_mib} MiB > {tier.max_disk_mib} MiB")
    if check_session and tier.max_session_s is not None:
        if not req.timeout_s:
            over.append(f"no timeout, but the session limit is {tier.max_session_s} s")
        elif req.timeout_s > tier.max_session_s:
            over.append(f"timeout {req.timeout_s} s > {tier.max_session_s} s")
    if over:
        raise Forbidden(f"Exceeds the limits of tier {tier.name!r}: " + "; ".join(over))


async def check_concurrency(s: AsyncSession, org: Org, tier: Tier) -> None:
    live = await repo.count_in_states(s, org.id, LIVE)
    if live >= tier.max_sandboxes:
        raise LimitReached(
            f"Sandbox limit reached: the organization already has {live} sandboxes "
            f"(maximum {tier.max_sandboxes})"
        )


async def take_create_slot(s: AsyncSession, org: Org, tier: Tier) -> None:
    """Count this create against the per-minute rate, or refuse with 429."""
    now = repo.now()
    since = now - RATE_WINDOW
    q = select(func.count(), func.min(CreateLog.at)).where(
        CreateLog.org_id == org.id, CreateLog.at > since
    )
    count, oldest = (await s.execute(q)).one()
    if count >= tier.creates_per_minute:
        wait = (oldest + RATE_WINDOW - now).total_seconds() if oldest else 60
        raise RateLimited(
            f"Create rate limit reached: {tier.creates_per_minute} per minute",
            retry_after=max(1, math.ceil(wait)),
        )
    s.add(CreateLog(org_id=org.id, at=now))
    # Old entries are of no use: keep the table small.
    await s.execute(delete(CreateLog).where(CreateLog.org_id == org.id, CreateLog.at <= since))


def template_request(tpl: Template, vcpu: int | None, memory_mib: int | None,
                     timeout_s: int | None, guardrails: bool) -> Request:
    return Request(vcpu or tpl.vcpu, memory_mib or tpl.memory_mib, tpl.disk_mib, timeout_s,
                   guardrails)
