"""Server-rendered SVG bar charts: no JavaScript, no CDN, readable by screen readers.

`bar_chart` draws one bar per label, with one or more series stacked in each bar. Every bar carries a
`<title>` (a hover tooltip and an accessible name); the page shows the same numbers in a table.
Values are ints or Decimals and are never turned into floats before layout, where only pixel
positions (which may be fractional) are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import count

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

Number = int | Decimal

_ids = count(1)

WIDTH = 960
HEIGHT = 260
MARGIN_LEFT = 64
MARGIN_RIGHT = 12
MARGIN_TOP = 28
MARGIN_BOTTOM = 28
MAX_X_LABELS = 8
LABEL_CHAR_PX = 7  # the widest a character of the 12 px axis labels is drawn, about
TICKS = 4


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[Number]
    color: str = "#3758c9"


def nice_ceiling(value: Number, ticks: int = TICKS) -> tuple[Number, Number]:
    """The smallest 1/2/2.5/5×10ⁿ step with `ticks` steps covering `value`; returns (top, step).

    Integer data (counts, micro-USD) never gets a fractional step.
    """
    if value <= 0:
        return ticks, 1
    raw = Decimal(value) / ticks
    magnitude = Decimal(10) ** raw.adjusted()
    for multiplier in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        step = magnitude * multiplier
        if step >= raw:
            break
    if isinstance(value, int):
        step = max(int(step.to_integral_value(rounding="ROUND_CEILING")), 1)
    else:
        step = _tidy(step)
    return _tidy(step * ticks) if isinstance(step, Decimal) else step * ticks, step


def _tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (250, not 2.5E+2)."""
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def _fmt_px(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[Number], str] = lambda v: f"{v:,}",
    width: int = WIDTH,
    height: int = HEIGHT,
    empty_text: str = "No data in this range",
) -> SafeString:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels")
    if any(v < 0 for s in series for v in s.values):
        raise ValueError("bar_chart draws non-negative values only")

    chart_id = f"chart-{next(_ids)}"
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    totals = [sum((s.values[i] for s in series), 0) for i in range(len(labels))]
    peak = max(totals, default=0)
    top, step = nice_ceiling(peak)

    def y(value: Number) -> float:
        return MARGIN_TOP + plot_h - float(Decimal(value) / Decimal(top)) * plot_h

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title" aria-describedby="{chart_id}-desc">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
    ]
    described = f"{len(labels)} bars" + (f" from {escape(labels[0])} to {escape(labels[-1])}" if labels else "")
    described += f"; highest {escape(fmt(peak))}." if labels else "."
    out.append(f'<desc id="{chart_id}-desc">{described}</desc>')

    # Grid and y-axis labels.
    out.append('<g class="chart-grid">')
    for i in range(TICKS + 1):
        value = step * i
        if isinstance(value, Decimal):
            value = _tidy(value)
        gy = _fmt_px(y(value))
        out.append(
            f'<line x1="{MARGIN_LEFT}" x2="{width - MARGIN_RIGHT}" y1="{gy}" y2="{gy}" stroke="#d8dde6" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{MARGIN_LEFT - 6}" y="{gy}" text-anchor="end" dominant-baseline="middle" '
            f'font-size="12" fill="#4a5568">{escape(fmt(value))}</text>'
        )
    out.append("</g>")

    # Legend, top left, one entry per series.
    out.append('<g class="chart-legend">')
    lx = MARGIN_LEFT
    for s in series:
        out.append(f'<rect x="{lx}" y="8" width="10" height="10" rx="2" fill="{escape(s.color)}"/>')
        out.append(f'<text x="{lx + 14}" y="17" font-size="12" fill="#1f2937">{escape(s.name)}</text>')
        lx += 28 + 7 * len(s.name)
    out.append("</g>")

    if not labels or peak == 0:
        out.append(
            f'<text class="chart-empty" x="{MARGIN_LEFT + plot_w / 2:.0f}" y="{MARGIN_TOP + plot_h / 2:.0f}" '
            f'text-anchor="middle" font-size="14" fill="#4a5568">{escape(empty_text)}</text>'
        )
    n = max(len(labels), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.72, 1.0)
    out.append('<g class="chart-bars">')
    for i, label in enumerate(labels):
        if totals[i] == 0:
            continue
        x = MARGIN_LEFT + slot * i + (slot - bar_w) / 2
        tooltip = escape(label) + ": " + ", ".join(f"{escape(s.name)} {escape(fmt(s.values[i]))}" for s in series)
        out.append(f'<g class="bar"><title>{tooltip}</title>')
        base: Number = 0
        for s in series:
            value = s.values[i]
            if value:
                y_top, y_bottom = y(base + value), y(base)
                out.append(
                    f'<rect x="{_fmt_px(x)}" y="{_fmt_px(y_top)}" width="{_fmt_px(bar_w)}" '
                    f'height="{_fmt_px(max(y_bottom - y_top, 0.5))}" fill="{escape(s.color)}"/>'
                )
            base += value
        out.append("</g>")
    out.append("</g>")

    # X labels: evenly spaced, always including the last.
    out.append('<g class="chart-x">')
    # As many as fit side by side (a narrow chart of long hourly labels holds fewer), MAX_X_LABELS at most.
    widest = LABEL_CHAR_PX * max((len(label) for label in labels), default=1) + 12
    max_labels = max(2, min(MAX_X_LABELS, int(plot_w // widest)))
    every = max(1, -(-len(labels) // max_labels))
    shown = set(range(0, len(labels), every)) | ({len(labels) - 1} if labels else set())
    if (
        len(labels) > 1
        and (len(labels) - 1) % every
        and (len(labels) - 1) - (len(labels) - 1) // every * every < every / 2
    ):
        shown.discard((len(labels) - 1) // every * every)
    placed: list[tuple[int, float, str, float, float]] = []  # index, x, anchor, left edge, right edge
    for i in sorted(shown):
        cx = MARGIN_LEFT + slot * i + slot / 2
        # A label centred under the first or last bar may not fit inside the drawing ("23:00 14 Nov"
        # under the last of 336 hourly bars): it is then aligned to the edge instead, never cut off.
        label_w = LABEL_CHAR_PX * len(labels[i])
        if cx + label_w / 2 > width - 2:
            placed.append((i, width - 2, "end", width - 2 - label_w, width - 2))
        elif cx - label_w / 2 < 2:
            placed.append((i, 2, "start", 2, 2 + label_w))
        else:
            placed.append((i, cx, "middle", cx - label_w / 2, cx + label_w / 2))
    # The last label always shows; one before it that it would now overlap gives way.
    while len(placed) > 1 and placed[-2][4] + 4 > placed[-1][3]:
        del placed[-2]
    for i, x, anchor, _, _ in placed:
        out.append(
            f'<text x="{_fmt_px(x)}" y="{height - 8}" text-anchor="{anchor}" font-size="12" fill="#4a5568">'
            f"{escape(labels[i])}</text>"
        )
    out.append("</g></svg>")
    return mark_safe("".join(out))
