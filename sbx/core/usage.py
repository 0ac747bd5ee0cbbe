"""What an organisation used and paid, from the ledger: by UTC day (of the
metering pass that charged it), by sandbox, and in total."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core import billing, money
from sbx.store.models import LedgerEntry, Org


@dataclass
class Line:
    vcpu_seconds: float = 0.0
    gib_seconds: float = 0.0
    guardrail_checks: int = 0
    sandbox_charges: int = 0  # micro-credits, positive
    guardrails_charges: int = 0
    credits_added: int = 0

    def add(self, e: LedgerEntry) -> None:
        if e.kind != "usage":
            if e.amount > 0:
                self.credits_added += e.amount
            return
        if e.item == "vcpu_s":
            self.vcpu_seconds += e.quantity
        elif e.item == "gib_s":
            self.gib_seconds += e.quantity
        elif e.item == "check":
            self.guardrail_checks += round(e.quantity)
        if e.wallet == "sandbox":
            self.sandbox_charges -= e.amount
        else:
            self.guardrails_charges -= e.amount

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpu_seconds": round(self.vcpu_seconds, 3),
            "gib_seconds": round(self.gib_seconds, 3),
            "guardrail_checks": self.guardrail_checks,
            "sandbox_charges": money.to_credits(self.sandbox_charges),
            "guardrails_charges": money.to_credits(self.guardrails_charges),
            "credits_added": money.to_credits(self.credits_added),
        }


@dataclass
class Usage:
    org: str
    since: date
    until: date
    by_day: dict[str, Line] = field(default_factory=lambda: defaultdict(Line))
    by_sandbox: dict[str, Line] = field(default_factory=lambda: defaultdict(Line))
    total: Line = field(default_factory=Line)
    wallets: list[billing.Wallet] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "organization": self.org,
            "from": self.since.isoformat(),
            "to": self.until.isoformat(),
            "wallets": [w.to_json() for w in self.wallets],
            "by_day": [{"day": d, **line.to_json()} for d, line in sorted(self.by_day.items())],
            "by_sandbox": [{"sandbox_id": sid, **line.to_json()}
                           for sid, line in sorted(self.by_sandbox.items())],
            "totals": self.total.to_json(),
        }


async def usage(s: AsyncSession, org: Org, since: date, until: date) -> Usage:
    """Ledger entries of days since..until (both included, UTC)."""
    start = datetime(since.year, since.month, since.day, tzinfo=UTC)
    end = datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
    out = Usage(org.name, since, until, wallets=await billing.wallets(s, org))
    rows = (await s.execute(
        select(LedgerEntry).where(LedgerEntry.org_id == org.id, LedgerEntry.at >= start,
                                  LedgerEntry.at < end).order_by(LedgerEntry.id)
    )).scalars()
    for e in rows:
        out.by_day[e.at.date().isoformat()].add(e)
        if e.sandbox_id:
            out.by_sandbox[e.sandbox_id].add(e)
        out.total.add(e)
    return out
