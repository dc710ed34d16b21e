"""Money is Decimal all the way; it is rounded to the cent (half up) only where a bill would."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
THOUSAND = Decimal(1000)


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def money(amount: Decimal, currency: str = "USD") -> str:
    """$1,234.50 (or "1,234.50 EUR" for a price table in another currency)."""
    text = f"{cents(amount):,.2f}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"


def size_text(gb: Decimal) -> str:
    """A GB figure people can read: GB from 1 GB up, MB or KB below."""
    if gb >= 1:
        return f"{gb:,.2f} GB"
    if gb * 1024 >= 1:
        return f"{gb * 1024:,.2f} MB"
    return f"{gb * 1024 * 1024:,.1f} KB"
