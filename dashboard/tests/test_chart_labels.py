"""X-axis labels stay inside the chart: the last hourly label ("23:00 14 Nov" under the last of 336
bars) is aligned to the right edge instead of being cut off, and labels never overlap."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.charts import LABEL_CHAR_PX, Series, bar_chart

TEXT = re.compile(r'<text x="([\d.]+)" y="\d+" text-anchor="(\w+)" font-size="12" fill="#4a5568">([^<]*)</text>')


def x_labels(svg: str) -> list[tuple[float, str, str]]:
    axis = svg.split('<g class="chart-x">')[1]
    return [(float(x), anchor, text) for x, anchor, text in TEXT.findall(axis)]


def extent(x: float, anchor: str, text: str) -> tuple[float, float]:
    width = LABEL_CHAR_PX * len(text)
    if anchor == "end":
        return x - width, x
    if anchor == "start":
        return x, x + width
    return x - width / 2, x + width / 2


def hourly_labels(hours: int) -> list[str]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [f"{start + timedelta(hours=i):%H:%M %d %b}" for i in range(hours)]


@pytest.mark.parametrize("width", [960, 600, 320])
@pytest.mark.parametrize("hours", [24, 48, 14 * 24, 14 * 24 - 5])
def test_hourly_labels_fit_inside_the_chart_without_overlapping(width, hours):
    labels = hourly_labels(hours)
    svg = bar_chart(labels, [Series("Requests", [1] * hours)], title="Requests", width=width)
    placed = x_labels(svg)
    assert placed[-1][2] == labels[-1]  # the last is always shown
    spans = [extent(*label) for label in placed]
    assert all(0 <= left and right <= width for left, right in spans), spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans


def test_the_last_of_336_hourly_labels_is_right_aligned_at_the_edge():
    labels = hourly_labels(14 * 24)
    placed = x_labels(bar_chart(labels, [Series("Requests", [1] * len(labels))], title="Requests"))
    x, anchor, text = placed[-1]
    assert (anchor, text) == ("end", "23:00 14 Nov") and x <= 960


def test_short_daily_labels_stay_centred_under_their_bars():
    labels = [f"{day:02d} Nov" for day in range(1, 8)]
    placed = x_labels(bar_chart(labels, [Series("Requests", [1] * 7)], title="Requests"))
    assert [anchor for _, anchor, _ in placed] == ["middle"] * 7
