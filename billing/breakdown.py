"""Usage broken down by model or by key: the top N by cost (then tokens, then requests), the rest
summed as one "other" row. From the rollups, like billing.queries.usage_series, with the same
filters, so a breakdown's total is the series' total. Sums saturate at 2^63 - 1 (billing.sums)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Sum
from django.db.models.enums import TextChoices

from accounts.models import ApiKey, Organization
from deployments.models import Deployment

from .models import Period, UsageRollup
from .periods import floor_day, floor_hour
from .sums import saturated, split_sums, totals

FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")
LARGE_FIELDS = ("input_tokens", "output_tokens", "cost_micros")
_SUMS = {"requests": Sum("requests"), "errors": Sum("errors"), **split_sums(*LARGE_FIELDS)}


class By(TextChoices):
    MODEL = "model", "Model"
    KEY = "key", "API key"


@dataclass
class BreakdownRow:
    """One model or key (`id` None: usage without one, e.g. an unknown model or a deleted key), or
    the "other" row (`other` True) summing every one beyond the top N (`members` of them)."""

    id: int | None
    label: str
    prefix: str = ""  # a key's display prefix
    other: bool = False
    members: int = 1
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    share: Decimal = field(default=Decimal(0))  # of the total cost (or tokens, or requests), 0 to 100

    @property
    def tokens(self) -> int:
        return saturated(self.input_tokens + self.output_tokens)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "prefix": self.prefix,
            "other": self.other,
            "members": self.members,
            **{name: getattr(self, name) for name in FIELDS},
            "share": self.share,
        }


@dataclass
class Breakdown:
    by: str
    rows: list[BreakdownRow]  # the top N, largest first, then "other" if any was left out
    totals: dict[str, int]
    share_of: str  # what `share` measures: "cost", "tokens" or "requests" (the first that is not 0)

    @property
    def groups(self) -> int:
        """How many models or keys had usage, "other" counted by its members."""
        return sum(row.members for row in self.rows)


def _rank(row: BreakdownRow) -> tuple:
    return (-row.cost_micros, -row.tokens, -row.requests, row.id is None, row.id or 0)


def _labels(by: str, ids: list[int]) -> dict[int, tuple[str, str]]:
    if by == By.MODEL:
        return {pk: (name, "") for pk, name in Deployment.objects.filter(pk__in=ids).values_list("pk", "name")}
    return {
        pk: (name, prefix) for pk, name, prefix in ApiKey.objects.filter(pk__in=ids).values_list("pk", "name", "prefix")
    }


def usage_breakdown(
    org: Organization,
    *,
    by: str,
    start: datetime,
    end: datetime,
    key: ApiKey | int | None = None,
    deployment: Deployment | int | None = None,
    period: str = "day",
    top: int = 10,
) -> Breakdown:
    """`org`'s usage between `start` and `end` (UTC, end exclusive) per model (`by="model"`, its
    deployment) or per key (`by="key"`), from the `period` rollups. Two queries."""
    by = By(by)
    period = Period(period)
    floor = floor_hour if period == Period.HOUR else floor_day
    top = max(1, top)
    qs = UsageRollup.objects.for_org(org).filter(period=period).between(floor(start), end)
    if key is not None:
        qs = qs.filter(api_key=key)
    if deployment is not None:
        qs = qs.filter(deployment=deployment)
    column = "deployment_id" if by == By.MODEL else "api_key_id"
    grouped = qs.values(column).annotate(**_SUMS).order_by()
    rows = []
    for row in grouped:
        large = totals(row, *LARGE_FIELDS)
        rows.append(
            BreakdownRow(
                id=row[column],
                label="",
                requests=int(row["requests"] or 0),
                errors=int(row["errors"] or 0),
                input_tokens=large["input_tokens"],
                output_tokens=large["output_tokens"],
                cost_micros=large["cost_micros"],
            )
        )
    rows = [row for row in rows if row.requests or row.tokens or row.cost_micros]
    rows.sort(key=_rank)
    head, tail = rows[:top], rows[top:]
    names = _labels(by, [row.id for row in head if row.id is not None])
    missing = "(unknown model)" if by == By.MODEL else "(no key)"
    for row in head:
        row.label, row.prefix = names.get(row.id, (missing, "")) if row.id is not None else (missing, "")
    if tail:
        other = BreakdownRow(id=None, label="Other", other=True, members=len(tail))
        for name in FIELDS:
            setattr(other, name, saturated(sum(getattr(row, name) for row in tail)))
        head.append(other)
    grand = {name: saturated(sum(getattr(row, name) for row in rows)) for name in FIELDS}
    share_of, measure = "requests", (lambda r: r.requests)
    if grand["cost_micros"]:
        share_of, measure = "cost", (lambda r: r.cost_micros)
    elif grand["input_tokens"] or grand["output_tokens"]:
        share_of, measure = "tokens", (lambda r: r.tokens)
    whole = sum(measure(row) for row in rows)
    for row in head:
        row.share = (
            (Decimal(measure(row)) * 100 / whole).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
            if whole
            else Decimal(0)
        )
    return Breakdown(by=by.value, rows=head, totals=grand, share_of=share_of)
