"""Usage charts, table and CSV, from the rollups only (billing.queries.usage_series)."""

from __future__ import annotations

import csv

from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from accounts.tenancy import OrgRequest, org_view
from billing.breakdown import By, usage_breakdown
from billing.forms import Preset, UsageFilterForm, preset_days
from billing.queries import usage_series
from lib.money import micros_to_usd

from ..charts import Series, bar_chart
from ..templatetags.tokios import compact, usd

INPUT_COLOR = "#3758c9"
OUTPUT_COLOR = "#d97706"
REQUEST_COLOR = "#0f766e"
COST_COLOR = "#7c3aed"
ERROR_COLOR = "#b91c1c"
PAIR_WIDTH = 600  # tokens and cost are drawn narrower, to stand side by side on a wide screen


def _filter_form(request: OrgRequest) -> UsageFilterForm:
    return UsageFilterForm.with_defaults(request.GET, org=request.org, today=timezone.now().date())


def _label(row: dict, period: str) -> str:
    moment = row["bucket_start"]
    return f"{moment:%H:%M %d %b}" if period == "hour" else f"{moment:%d %b}"


def usage_charts(rows: list[dict], period: str) -> list:
    """Requests, then tokens and cost (the page puts those two side by side)."""
    labels = [_label(row, period) for row in rows]

    def column(name: str) -> list[int]:
        return [row[name] for row in rows]

    return [
        bar_chart(
            labels,
            [
                Series("Succeeded", [r["requests"] - r["errors"] for r in rows], REQUEST_COLOR),
                Series("Errors", column("errors"), ERROR_COLOR),
            ],
            title="Requests",
            fmt=compact,
        ),
        bar_chart(
            labels,
            [
                Series("Input tokens", column("input_tokens"), INPUT_COLOR),
                Series("Output tokens", column("output_tokens"), OUTPUT_COLOR),
            ],
            title="Tokens",
            fmt=compact,
            width=PAIR_WIDTH,
        ),
        bar_chart(
            labels, [Series("Cost", column("cost_micros"), COST_COLOR)], title="Cost (USD)", fmt=usd, width=PAIR_WIDTH
        ),
    ]


def preset_links(request: OrgRequest, form: UsageFilterForm) -> list[dict]:
    """A link per date preset, keeping the other filters; the one whose days are on show is current."""
    kept = request.GET.copy()
    for name in ("range", "start", "end"):
        kept.pop(name, None)
    today = form.today
    shown = (form.cleaned_data["start"], form.cleaned_data["end"]) if form.is_valid() else None
    narrowed = form.is_valid() and form.narrowed_from is not None
    links = []
    for value, label in Preset.choices:
        kept["range"] = value
        links.append(
            {
                "label": label,
                "url": f"?{kept.urlencode()}",
                "current": form.is_valid() and not narrowed and shown == preset_days(value, today),
            }
        )
    return links


@org_view
def usage(request: OrgRequest) -> HttpResponse:
    form = _filter_form(request)
    context = {"form": form, "presets": preset_links(request, form)}
    if form.is_valid():
        query = form.query()
        rows = usage_series(request.org, **query)
        totals = {
            name: sum(row[name] for row in rows)
            for name in ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")
        }
        top = form.cleaned_data["top"]
        context.update(
            rows=rows,
            totals=totals,
            charts=usage_charts(rows, query["period"]),
            period=query["period"],
            by_model=usage_breakdown(request.org, by=By.MODEL, top=top, **query),
            by_key=usage_breakdown(request.org, by=By.KEY, top=top, **query),
            narrowed_from=form.narrowed_from,
            max_hourly_days=form.MAX_HOURLY_DAYS,
            csv_query=request.GET.urlencode(),
        )
    return render(request, "dashboard/usage.html", context, status=200 if form.is_valid() else 400)


class _Echo:
    def write(self, value: str) -> str:
        return value


@org_view
def usage_csv(request: OrgRequest) -> HttpResponse:
    form = _filter_form(request)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain; charset=utf-8")
    query = form.query()
    rows = usage_series(request.org, **query)
    writer = csv.writer(_Echo())
    header = ["bucket_start", "requests", "errors", "input_tokens", "output_tokens", "cost_usd", "cost_micros"]

    def lines():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow(
                [
                    row["bucket_start"].isoformat(),
                    row["requests"],
                    row["errors"],
                    row["input_tokens"],
                    row["output_tokens"],
                    micros_to_usd(row["cost_micros"]),
                    row["cost_micros"],
                ]
            )

    scope = "".join(
        f"-{part}"
        for part in (query["key"] and query["key"].prefix, query["deployment"] and query["deployment"].name)
        if part
    )
    filename = f"tokios-usage-{request.org.slug}{scope}-{form.cleaned_data['start']}-{form.cleaned_data['end']}.csv"
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
