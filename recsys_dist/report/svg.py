"""Charts as inline SVG strings, drawn in Python so the report needs no JavaScript or network.

Every function is pure (data in, markup out) and escapes all text it is given: user ids and
group names are untrusted. Charts are about 800 px wide; the page scales them down if needed.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recsys_dist.report.figures import words

# Tableau 10 without its grey (reserved for the merged "other" group of the interest charts).
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
)  # fmt: skip
CHAR_WIDTH = 6.5  # rough width of one 12 px character, for laying out legends and labels


def esc(text: object) -> str:
    """Escape text for HTML element content and quoted attribute values alike; a mapping or
    list that got this far is written out in words, never as a Python ``repr``."""
    if isinstance(text, (Mapping, list, tuple, set, frozenset)):
        text = words(text)
    return html.escape(str(text), quote=True)


def fmt(value: float) -> str:
    """A short number for tick labels and tables: 4 significant digits, no trailing zeros."""
    if value == 0:
        return "0"
    return f"{value:.4g}"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Box:
    """The plot area in pixels; scales map data ranges into it (y grows upwards)."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def x(self, value: float, lo: float, hi: float) -> float:
        return self.left + (value - lo) / (hi - lo) * self.width

    def y(self, value: float, lo: float, hi: float) -> float:
        return self.bottom - (value - lo) / (hi - lo) * self.height

    def outline(self) -> str:
        """The box itself, tagged so tests can check that marks stay inside it."""
        return (
            f'<rect class="plot-box" x="{self.left:.1f}" y="{self.top:.1f}" '
            f'width="{self.width:.1f}" height="{self.height:.1f}" fill="none" stroke="#ddd"/>'
        )


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi] with about count ticks."""
    if not hi > lo:
        hi = lo + 1.0
    raw_step = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw_step))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw_step <= step * multiple:
            step *= multiple
            break
    first = math.floor(lo / step + 1e-9) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def nice_domain(values: Sequence[float]) -> tuple[float, float]:
    """Data range widened outwards to round ticks, so lines never touch the frame by accident."""
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return min(ticks[0], math.floor(lo / step) * step), max(ticks[-1], math.ceil(hi / step) * step)


def axes(box: Box, x_ticks, y_ticks, x_label: str = "", y_label: str = "") -> str:
    """Grid lines, tick labels and axis titles; ticks are (pixel position, label) pairs."""
    parts = [box.outline()]
    for px, label in y_ticks:
        parts.append(
            f'<line class="grid" x1="{box.left:.1f}" x2="{box.right:.1f}" y1="{px:.1f}" '
            f'y2="{px:.1f}"/><text class="tick" x="{box.left - 6:.1f}" y="{px + 4:.1f}" '
            f'text-anchor="end">{esc(label)}</text>'
        )
    for px, label in x_ticks:
        parts.append(
            f'<line class="axis" x1="{px:.1f}" x2="{px:.1f}" y1="{box.bottom:.1f}" '
            f'y2="{box.bottom + 4:.1f}"/><text class="tick" x="{px:.1f}" '
            f'y="{box.bottom + 17:.1f}" text-anchor="middle">{esc(label)}</text>'
        )
    if x_label:
        parts.append(
            f'<text class="axis-label" x="{box.left + box.width / 2:.1f}" '
            f'y="{box.bottom + 34:.1f}" text-anchor="middle">{esc(x_label)}</text>'
        )
    if y_label:
        cy = box.top + box.height / 2
        parts.append(
            f'<text class="axis-label" x="14" y="{cy:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {cy:.1f})">{esc(y_label)}</text>'
        )
    return "".join(parts)


def layout_legend(
    items: Sequence[tuple[str, object]], left: float, top: float, width: float, swatch
):
    """Legend entries laid out in rows; returns (svg, height). swatch(x, y, key) draws one key."""
    parts, x, y = [], left, top
    for label, key in items:
        shown = shorten(label, 28)
        item_width = 22 + len(shown) * CHAR_WIDTH + 16
        if x > left and x + item_width > left + width:
            x, y = left, y + 18
        parts.append(
            f'<g class="legend-item">{swatch(x, y, key)}<text x="{x + 20:.1f}" y="{y + 10:.1f}">'
            f"<title>{esc(label)}</title>{esc(shown)}</text></g>"
        )
        x += item_width
    return "".join(parts), (y - top + 18 if items else 0)


def svg_element(width: float, height: float, body: str, css_class: str, title: str = "") -> str:
    heading = (
        f'<text class="chart-title" x="{width / 2:.1f}" y="16" text-anchor="middle">'
        f"{esc(title)}</text>"
        if title
        else ""
    )
    return (
        f'<svg class="chart {css_class}" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">{heading}{body}</svg>'
    )


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 800,
    plot_height: int = 180,
) -> str:
    """One line per series of (x, y) points, with markers so single epochs still show.

    Points whose y is None or not finite are dropped (metrics.jsonl rows may lack a key). When
    every x is a whole number (epochs) only whole-number ticks are drawn.
    """
    clean = {
        name: [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(y)]
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    xs = [x for points in clean.values() for x, _ in points] or [0.0]
    ys = [y for points in clean.values() for _, y in points] or [0.0]
    x_lo, x_hi = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    y_lo, y_hi = nice_domain(ys)
    box = Box(left=64, top=28, width=width - 84, height=plot_height)
    whole = all(x == int(x) for x in xs)
    x_values = [t for t in nice_ticks(x_lo, x_hi, 8) if not whole or t == int(t)]
    x_ticks = [(box.x(t, x_lo, x_hi), fmt(t)) for t in x_values]
    y_ticks = [(box.y(t, y_lo, y_hi), fmt(t)) for t in nice_ticks(y_lo, y_hi)]
    parts = [axes(box, x_ticks, y_ticks, x_label, y_label)]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(clean)}
    for name, points in clean.items():
        coords = [(box.x(x, x_lo, x_hi), box.y(y, y_lo, y_hi)) for x, y in points]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
        parts.append(
            f'<polyline class="series" fill="none" stroke="{colors[name]}" points="{path}"/>'
        )
        parts.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colors[name]}">'
            f"<title>{esc(name)} @ {fmt(x)}: {fmt(y)}</title></circle>"
            for (px, py), (x, y) in zip(coords, points)
        )

    def swatch(x: float, y: float, name: str) -> str:
        return (
            f'<line x1="{x:.1f}" x2="{x + 16:.1f}" y1="{y + 6:.1f}" y2="{y + 6:.1f}" '
            f'stroke="{colors[name]}" stroke-width="3"/>'
        )

    legend, legend_height = layout_legend(
        [(n, n) for n in clean], box.left, box.bottom + 44, box.width, swatch
    )
    parts.append(legend)
    height = box.bottom + 50 + legend_height
    return svg_element(width, height, "".join(parts), "line-chart", title)


def histogram_counts(values: Sequence[float], bins: int, lo: float, hi: float) -> list[int]:
    """Counts per equal-width bin over [lo, hi]; values outside are clamped into the end bins."""
    counts = [0] * bins
    for value in values:
        index = int((value - lo) / (hi - lo) * bins)
        counts[min(max(index, 0), bins - 1)] += 1
    return counts


def histogram_svg(
    values: Sequence[float],
    *,
    bins: int = 20,
    lo: float = 0.0,
    hi: float = 1.0,
    title: str = "",
    x_label: str = "",
    unit: str = "users",
    width: int = 800,
    height: int = 280,
) -> str:
    """Bars of counts per bin, with the mean and median marked, for a distribution over [lo, hi].

    Non-finite values are dropped; the annotation states how many values were counted.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    counts = histogram_counts(finite, bins, lo, hi)
    box = Box(left=64, top=44, width=width - 84, height=height - 96)
    c_hi = nice_domain([0, max(counts, default=0) or 1])[1]
    x_ticks = [(box.x(t, lo, hi), fmt(t)) for t in nice_ticks(lo, hi, 10)]
    y_ticks = [(box.y(t, 0, c_hi), fmt(t)) for t in nice_ticks(0, c_hi) if t == int(t)]
    parts = [axes(box, x_ticks, y_ticks, x_label, f"number of {unit}")]
    bin_width = box.width / bins
    for i, count in enumerate(counts):
        top = box.y(count, 0, c_hi)
        start = lo + (hi - lo) * i / bins
        end = lo + (hi - lo) * (i + 1) / bins
        parts.append(
            f'<rect class="bar" data-count="{count}" x="{box.left + i * bin_width + 1:.1f}" '
            f'y="{top:.1f}" width="{bin_width - 2:.1f}" height="{box.bottom - top:.1f}" '
            f'fill="{PALETTE[0]}"><title>[{fmt(start)}, {fmt(end)}): {count}</title></rect>'
        )
    summary = f"n = {len(finite)} {unit}"
    if finite:
        mean, median = statistics.fmean(finite), statistics.median(finite)
        summary += f" · mean {mean:.3f} · median {median:.3f}"
        for name, value, color, dash in (
            ("mean", mean, "#e15759", "6 3"),
            ("median", median, "#333", "2 3"),
        ):
            px = box.x(min(max(value, lo), hi), lo, hi)
            right = (mean >= median) == (name == "mean")  # labels point away from each other
            parts.append(
                f'<line class="{name}" x1="{px:.1f}" x2="{px:.1f}" y1="{box.top:.1f}" '
                f'y2="{box.bottom:.1f}" stroke="{color}" stroke-width="2" '
                f'stroke-dasharray="{dash}"><title>{name} {value:.3f}</title></line>'
                f'<text class="tick" x="{px + (4 if right else -4):.1f}" y="{box.top + 12:.1f}" '
                f'text-anchor="{"start" if right else "end"}" fill="{color}">{name}</text>'
            )
    parts.append(
        f'<text class="summary" x="{box.right:.1f}" y="{box.top - 8:.1f}" '
        f'text-anchor="end">{esc(summary)}</text>'
    )
    return svg_element(width, height, "".join(parts), "histogram", title)
