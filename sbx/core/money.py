"""Money: integer micro-credits in the store (1 credit = 1 000 000), so
sums are exact; credits as decimal strings only at the edges."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICRO = 1_000_000


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
