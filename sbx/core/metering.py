"""Metering: running time and guardrail checks into the ledger, exactly once.

Each sandbox has a cursor, `metered_until`: its running time before that
instant is in the ledger. A metering pass charges, per sandbox, the running
time between the cursor and now (from the sandbox's state events, so time
spent paused, snapshotting or pooled costs nothing) and moves the cursor,
in the same transaction as the ledger entries. Guardrail checks are counted
per organisation and day by the egress proxy; `charged` says how many of
them are in the ledger, and moves with the entries the same way. A crash
at any point leaves either both or neither: no charge is lost or made
twice, whatever the pass was doing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core import billing, money
from sbx.shared.lifecycle import LIVE
from sbx.shared.lifecycle import SandboxState as S
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import GuardrailUsage, Org, Sandbox, SandboxEvent, Tier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


def running_between(events: Sequence[SandboxEvent], since: datetime, until: datetime
                    ) -> list[Interval]:
    """The parts of [since, until) the sandbox was running, from its state
    events (in order)."""
    out: list[Interval] = []
    started: datetime | None = None
    for e in events:
        if e.to_state == S.RUNNING and started is None:
            started = e.at
        elif e.to_state != S.RUNNING and started is not None:
            out.append(Interval(started, e.at))
            started = None
    if started is not None:
        out.append(Interval(started, until))
    clipped = []
    for iv in out:
        a, b = max(iv.start, since), min(iv.end, until)
        if b > a:
            clipped.append(Interval(a, b))
    return clipped


async def _charge_sandbox(s: AsyncSession, row: Sandbox, tier: Tier, now: datetime) -> int:
    since = row.metered_until or row.created_at
    until = min(now, row.ended_at) if row.ended_at else now
    if until <= since:
        return 0
    events = (await s.execute(
        select(SandboxEvent).where(SandboxEvent.sandbox_id == row.id)
        .order_by(SandboxEvent.id)
    )).scalars().all()
    seconds = sum(iv.seconds for iv in running_between(events, since, until))
    charged = 0
    if seconds > 0:
        for item, quantity, price in (
            ("vcpu_s", seconds * row.vcpu, tier.price_vcpu_s),
            ("gib_s", seconds * row.memory_mib / 1024, tier.price_gib_s),
        ):
            amount = money.charge(quantity, price)
            billing.post(s, row.org_id, "sandbox", "usage", -amount, at=now,
                         sandbox_id=row.id, item=item, quantity=quantity, unit_price=price,
                         period_start=since, period_end=until)
            charged += amount
    row.metered_until = until
    return charged


async def meter(db: Database, skip_orgs: Sequence[str] = ()) -> dict[str, int]:
    """One pass over everything not yet charged; answers micro-credits
    charged per organisation."""
    charged: dict[str, int] = {}
    async with db.transaction() as s:
        await repo.write_lock(s, "metering")
        now = repo.now()
        tiers = {t.name: t for t in (await s.execute(select(Tier))).scalars()}
        orgs = {o.id: o for o in (await s.execute(select(Org))).scalars()}
        # Locked (PostgreSQL; SQLite's write lock covers them already): a
        # row deleted meanwhile (a create that failed) would fail the pass
        # when its cursor is written.
        rows = (await s.execute(
            select(Sandbox).where(
                Sandbox.org_id.not_in(list(skip_orgs)),
                or_(Sandbox.state.in_(list(LIVE)),
                    Sandbox.metered_until.is_(None),
                    Sandbox.metered_until < Sandbox.ended_at),
            ).order_by(Sandbox.id).with_for_update()
        )).scalars().all()
        for row in rows:
            org = orgs.get(row.org_id)
            if org is None or row.state == S.POOLED:
                continue
            amount = await _charge_sandbox(s, row, tiers[org.tier], now)
            charged[org.id] = charged.get(org.id, 0) + amount
        usage = (await s.execute(
            select(GuardrailUsage).where(GuardrailUsage.checks > GuardrailUsage.charged)
        )).scalars().all()
        for u in usage:
            org = orgs.get(u.org_id)
            if org is None:
                continue
            checks = u.checks - u.charged
            price = tiers[org.tier].price_check
            amount = money.charge(float(checks), price)
            billing.post(s, org.id, "guardrails", "usage", -amount, at=now, item="check",
                         quantity=float(checks), unit_price=price, note=f"checks of {u.day}")
            u.charged = u.checks
            charged[org.id] = charged.get(org.id, 0) + amount
    return charged
