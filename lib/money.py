"""Money is integer micro-USD everywhere; these convert at the edges (forms, commands, display)."""

from __future__ import annotations

from decimal import Decimal

MICROS_PER_USD = 1_000_000


def usd_to_micros(value: str | Decimal) -> int:
    """Parse a USD amount ("0.15") into integer micro-USD, refusing floats' rounding surprises."""
    amount = Decimal(str(value))
    if amount < 0:
        raise ValueError("a price cannot be negative")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{value} has more precision than a micro-dollar")
    return int(micros)


def micros_to_usd(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.000001"))
