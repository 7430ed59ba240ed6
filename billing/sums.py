"""Sums of usage columns that cannot overflow 64 bits, on SQLite and on PostgreSQL.

Every event is bounded when it is written (tokens to 2^31 - 1, cost to 2^53 - 1: billing.models),
but a sum over rows is not: SQLite's SUM() fails with "integer overflow" past 2^63 - 1, and
PostgreSQL's (numeric) fails only when the result is stored in a bigint column. Either failure in
the roll-up would stop the watermark, and with it every org's rollups, pages, statements and pruning.

So a column is summed in two halves, the multiples of 2^32 and the rest, each of which stays far
inside 64 bits for up to 2^31 rows of any bigint value; Python puts them together and saturates the
total at 2^63 - 1, which a page or a statement then shows instead of failing.
"""

from __future__ import annotations

from typing import Any

from django.db.models import BigIntegerField, Case, F, Sum, Value, When
from django.db.models.expressions import Combinable

from .models import MAX_BIGINT

SPLIT = 2**32


def saturated(value: int) -> int:
    return min(max(0, value), MAX_BIGINT)


def split_sums(*names: str) -> dict[str, Sum]:
    """Annotations for `.aggregate()` / `.annotate()`: two sums per column (see `totals`)."""
    sums: dict[str, Sum] = {}
    for name in names:
        high = F(name) / Value(SPLIT)  # integer division on both back-ends
        sums[f"{name}_high"] = Sum(high)
        sums[f"{name}_low"] = Sum(F(name) - high * Value(SPLIT))
    return sums


def totals(row: dict[str, Any], *names: str) -> dict[str, int]:
    """The saturated totals of `names` from a row of `split_sums` annotations (NULL sums are 0)."""
    return {name: saturated(int(row[f"{name}_high"] or 0) * SPLIT + int(row[f"{name}_low"] or 0)) for name in names}


def saturating_add(name: str, amount: int) -> Combinable:
    """`name + amount` for an UPDATE, at most 2^63 - 1 (the comparison itself cannot overflow)."""
    amount = saturated(amount)
    return Case(
        When(**{f"{name}__gt": MAX_BIGINT - amount}, then=Value(MAX_BIGINT)),
        default=F(name) + amount,
        output_field=BigIntegerField(),
    )
