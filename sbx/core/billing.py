"""Wallets and the ledger they are summed from.

Amounts are micro-credits (sbx.core.money). Nothing in the ledger is ever
updated or deleted: a balance is the sum of its wallet's entries, charges
negative, top-ups positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core.accounts import org_named
from sbx.core.errors import PaymentRequired
from sbx.core.money import to_credits, to_micro
from sbx.store import repo
from sbx.store.models import LedgerEntry, Org

WALLETS = ("sandbox", "guardrails")


def _check(wallet: str) -> None:
    if wallet not in WALLETS:
        raise ValueError("wallet must be sandbox or guardrails")


async def balance(s: AsyncSession, org_id: str, wallet: str) -> int:
    _check(wallet)
    q = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
        LedgerEntry.org_id == org_id, LedgerEntry.wallet == wallet)
    return int((await s.execute(q)).scalar_one())


def enforced(org: Org, wallet: str) -> bool:
    _check(wallet)
    return bool(org.sandbox_wallet if wallet == "sandbox" else org.guardrails_wallet)


def post(s: AsyncSession, org_id: str, wallet: str, kind: str, amount: int,
         at: datetime | None = None, **fields: Any) -> LedgerEntry:
    """Append one entry (in the caller's transaction)."""
    _check(wallet)
    entry = LedgerEntry(at=at or repo.now(), org_id=org_id, wallet=wallet, kind=kind,
                        amount=amount, **fields)
    s.add(entry)
    return entry


async def topup(s: AsyncSession, org_name: str, wallet: str, credits: str) -> int:
    """Credit the wallet (and enforce it from now on); answers the balance."""
    _check(wallet)
    amount = to_micro(credits)
    if amount <= 0:
        raise ValueError("a top-up must be positive")
    org = await org_named(s, org_name)
    setattr(org, f"{wallet}_wallet", True)
    post(s, org.id, wallet, "topup", amount, note=f"top-up of {to_credits(amount)}")
    await s.flush()
    return await balance(s, org.id, wallet)


async def set_balance(s: AsyncSession, org_name: str, wallet: str, credits: str | None
                      ) -> int | None:
    """Bring the wallet to exactly credits with one adjusting entry and
    enforce it; None turns enforcement off (usage is still charged)."""
    _check(wallet)
    org = await org_named(s, org_name)
    # The balance read below must still hold when the adjustment is written.
    await repo.lock_org(s, org.id)
    if credits is None:
        setattr(org, f"{wallet}_wallet", False)
        return None
    target = to_micro(credits)
    current = await balance(s, org.id, wallet)
    if target != current:
        post(s, org.id, wallet, "adjust", target - current,
             note=f"set to {to_credits(target)}")
    setattr(org, f"{wallet}_wallet", True)
    await s.flush()
    return target


async def check_wallets(s: AsyncSession, org: Org, guardrails: bool) -> None:
    """402 when an enforced wallet the create needs has nothing left."""
    if org.sandbox_wallet and await balance(s, org.id, "sandbox") <= 0:
        raise PaymentRequired("The organization's sandbox wallet has no balance")
    if guardrails and org.guardrails_wallet and await balance(s, org.id, "guardrails") <= 0:
        raise PaymentRequired("The organization's guardrails wallet has no balance")


@dataclass(frozen=True)
class Wallet:
    name: str
    enforced: bool
    balance: int

    def to_json(self) -> dict[str, Any]:
        return {"wallet": self.name, "enforced": self.enforced,
                "balance": to_credits(self.balance)}


async def wallets(s: AsyncSession, org: Org) -> list[Wallet]:
    return [Wallet(w, enforced(org, w), await balance(s, org.id, w)) for w in WALLETS]
