from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from dashboard.charts import HEIGHT, MARGIN_BOTTOM, MARGIN_TOP, Series, bar_chart, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))


def bars(root: ET.Element) -> list[ET.Element]:
    return root.findall(f".//{SVG}g[@class='chart-bars']/{SVG}g")


def test_it_draws_one_bar_per_nonzero_label_with_a_tooltip():
    root = parse(bar_chart(["a", "b", "c"], [Series("Requests", [1, 0, 3])], title="Requests"))
    drawn = bars(root)
    assert len(drawn) == 2
    assert [g.find(f"{SVG}title").text for g in drawn] == ["a: Requests 1", "c: Requests 3"]


def test_bar_heights_are_proportional_to_values():
    root = parse(bar_chart(["a", "b"], [Series("n", [2, 4])], title="t"))
    heights = [float(g.find(f"{SVG}rect").get("height")) for g in bars(root)]
    assert heights[1] == pytest.approx(2 * heights[0])


def test_the_top_of_the_axis_is_a_nice_number_above_the_peak():
    root = parse(bar_chart(["a"], [Series("n", [37])], title="t"))
    labels = [t.text for t in root.findall(f".//{SVG}g[@class='chart-grid']/{SVG}text")]
    assert labels == ["0", "10", "20", "30", "40"]
    rect = bars(root)[0].find(f"{SVG}rect")
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    assert float(rect.get("height")) == pytest.approx(plot_h * 37 / 40, abs=0.01)


def test_stacked_series_sit_on_top_of_each_other():
    root = parse(bar_chart(["d"], [Series("in", [30], "#111111"), Series("out", [10], "#222222")], title="Tokens"))
    lower, upper = bars(root)[0].findall(f"{SVG}rect")
    assert lower.get("fill") == "#111111" and upper.get("fill") == "#222222"
    assert float(upper.get("y")) + float(upper.get("height")) == pytest.approx(float(lower.get("y")), abs=0.02)
    assert float(lower.get("height")) == pytest.approx(3 * float(upper.get("height")), abs=0.05)


def test_it_has_an_accessible_name_and_description():
    root = parse(bar_chart(["1 Nov", "2 Nov"], [Series("n", [5, 6])], title="Requests per day"))
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby"), root.get("aria-describedby")
    assert root.find(f"{SVG}title").get("id") == title_id and root.find(f"{SVG}title").text == "Requests per day"
    assert root.find(f"{SVG}desc").get("id") == desc_id
    assert "from 1 Nov to 2 Nov" in root.find(f"{SVG}desc").text


def test_it_escapes_labels_and_names():
    svg = bar_chart(["<script>"], [Series("a&b", [1])], title="x<y")
    root = parse(svg)  # would raise on unescaped markup
    assert "<script>" not in svg
    assert root.find(f"{SVG}title").text == "x<y"


def test_an_empty_range_says_so_instead_of_drawing_bars():
    root = parse(bar_chart(["a", "b"], [Series("n", [0, 0])], title="t", empty_text="Nothing yet"))
    assert bars(root) == []
    assert root.find(f".//{SVG}text[@class='chart-empty']").text == "Nothing yet"
    root = parse(bar_chart([], [Series("n", [])], title="t"))
    assert root.find(f".//{SVG}text[@class='chart-empty']") is not None


def test_it_shows_at_most_eight_x_labels_for_a_year():
    labels = [f"d{i}" for i in range(365)]
    root = parse(bar_chart(labels, [Series("n", list(range(1, 366)))], title="t"))
    shown = [t.text for t in root.findall(f".//{SVG}g[@class='chart-x']/{SVG}text")]
    assert 2 <= len(shown) <= 9
    assert shown[0] == "d0" and shown[-1] == "d364"
    assert len(bars(root)) == 365


def test_it_formats_axis_values_with_the_given_function():
    root = parse(bar_chart(["a"], [Series("cost", [Decimal("1.5")])], title="t", fmt=lambda v: f"${v}"))
    labels = [t.text for t in root.findall(f".//{SVG}g[@class='chart-grid']/{SVG}text")]
    assert labels[0] == "$0" and labels[-1] == "$2"


def test_it_refuses_series_of_the_wrong_length_or_negative_values():
    with pytest.raises(ValueError):
        bar_chart(["a", "b"], [Series("n", [1])], title="t")
    with pytest.raises(ValueError):
        bar_chart(["a"], [Series("n", [-1])], title="t")


@pytest.mark.parametrize(
    ("value", "top"),
    [
        (0, 4),
        (1, 4),
        (4, 4),
        (5, 8),
        (37, 40),
        (101, 200),
        (999, 1000),
        (1_000_001, 2_000_000),
        (Decimal("0.3"), Decimal("0.4")),
    ],
)
def test_nice_ceiling_rounds_up_to_one_two_or_five_steps(value, top):
    got, step = nice_ceiling(value)
    assert got == top
    assert got >= value
    assert step * 4 == got


def test_decimal_steps_never_use_exponent_notation():
    top, step = nice_ceiling(Decimal("900"))
    assert str(top) == "1000" and str(step) == "250"
