"""Wallets and the ledger they are summed from.

Money is integer micro-credits (1 credit = 1 000 000) everywhere in the
store, so sums are exact; credits as decimals only at the edges (CLI, API).
Nothing in the ledger is ever updated or deleted: a balance is the sum of
its wallet's entries, charges negative, top-ups positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sbx.core.errors import NotFound, PaymentRequired
from sbx.store import repo
from sbx.store.models import LedgerEntry, Org

MICRO = 1_000_000
WALLETS = ("sandbox", "guardrails")


def to_micro(credits: str | float | Decimal) -> int:
    """Credits (a decimal, at most 6 places kept) to micro-credits."""
    try:
        value = Decimal(str(credits))
    except InvalidOperation:
        raise ValueError(f"not an amount: {credits!r}") from None
    if not value.is_finite():
        raise ValueError(f"not an amount: {credits!r}")
    return int((value * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def to_credits(micro: int) -> str:
    """Micro-credits as a decimal string of credits ("12.500000")."""
    return str((Decimal(micro) / MICRO).quantize(Decimal("0.000001")))


def charge(quantity: float, unit_price: int) -> int:
    """The (positive) micro-credits owed for quantity units at unit_price."""
    return int((Decimal(repr(quantity)) * unit_price).quantize(Decimal(1),
                                                                rounding=ROUND_HALF_EVEN))


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


async def _org(s: AsyncSession, name: str) -> Org:
    org = await repo.org_by_name(s, name)
    if org is None:
        raise NotFound(f"no organisation named {name!r}")
    return org


async def topup(s: AsyncSession, org_name: str, wallet: str, credits: str) -> int:
    """Credit the wallet (and enforce it from now on); answers the balance."""
    _check(wallet)
    amount = to_micro(credits)
    if amount <= 0:
        raise ValueError("a top-up must be positive")
    org = await _org(s, org_name)
    setattr(org, f"{wallet}_wallet", True)
    post(s, org.id, wallet, "topup", amount, note=f"top-up of {to_credits(amount)}")
    await s.flush()
    return await balance(s, org.id, wallet)


async def set_balance(s: AsyncSession, org_name: str, wallet: str, credits: str | None
                      ) -> int | None:
    """Bring the wallet to exactly credits with one adjusting entry and
    enforce it; None turns enforcement off (usage is still charged)."""
    _check(wallet)
    # The balance read below must still hold when the adjustment is written.
    await repo.write_lock(s)
    org = await _org(s, org_name)
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
