"""A user's interest trajectory as an inline SVG stacked-area chart.

Shares per window stack to 100%; change points are dashed verticals and the forecast of the next
window is a hatched bar to the right, so "what was" and "what we predict" never look alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from recsys_dist.interests.record import ChangePointRecord, MovedGroup
from recsys_dist.report.svg import (
    CHAR_WIDTH,
    PALETTE,
    Box,
    axes,
    esc,
    layout_legend,
    shorten,
    svg_element,
)

OTHER_COLOR = "#bab0ac"  # Tableau's grey, kept out of PALETTE so "other" never looks like a group
OTHER = "other"
MINOR_SHARE = 0.03  # a group below this share in every window (and the forecast) joins "other"


def merge_minor_groups(
    groups: Sequence[str],
    profiles: Sequence[Sequence[float]],
    forecast: Sequence[float] | None,
    threshold: float = MINOR_SHARE,
) -> tuple[list[str], list[list[float]], list[float] | None]:
    """Fold groups that never reach ``threshold`` into "other", so the legend stays readable.

    Kept groups are ordered by mean share (largest at the bottom of the stack); "other" is last.
    """
    rows = [list(row) for row in profiles] + ([list(forecast)] if forecast is not None else [])
    peak = [max((row[g] for row in rows), default=0.0) for g in range(len(groups))]
    mean = [sum(row[g] for row in rows) / max(len(rows), 1) for g in range(len(groups))]
    major = [g for g in range(len(groups)) if peak[g] >= threshold and groups[g] != OTHER]
    major.sort(key=lambda g: -mean[g])
    minor = [g for g in range(len(groups)) if g not in major]
    names = [groups[g] for g in major] + ([OTHER] if minor else [])

    def fold(row: Sequence[float]) -> list[float]:
        return [row[g] for g in major] + ([sum(row[g] for g in minor)] if minor else [])

    return names, [fold(row) for row in profiles], fold(forecast) if forecast is not None else None


def group_colors(group_lists: Sequence[Sequence[str]]) -> dict[str, str]:
    """One colour per group name across all charts, so a category looks the same for every user."""
    colors: dict[str, str] = {OTHER: OTHER_COLOR}
    for groups in group_lists:
        for name in groups:
            if name not in colors:
                colors[name] = PALETTE[(len(colors) - 1) % len(PALETTE)]
    return colors


def _normalise(row: Sequence[float]) -> list[float]:
    """Shares that stack to at most 1 even if the input is slightly off (float noise, negatives)."""
    clean = [v if math.isfinite(v) and v > 0 else 0.0 for v in map(float, row)]
    total = sum(clean)
    return [v / total for v in clean] if total > 0 else clean


def _check_trajectory(groups, window_starts, profiles, forecast) -> None:
    widths = sorted({len(row) for row in profiles})
    if not profiles or len(window_starts) != len(profiles) or widths != [len(groups)]:
        raise ValueError(
            f"trajectory shapes disagree: {len(groups)} groups, {len(window_starts)} window "
            f"starts, {len(profiles)} profile rows of widths {widths}"
        )
    if forecast is not None and len(forecast) != len(groups):
        raise ValueError(f"forecast has {len(forecast)} shares for {len(groups)} groups")


def _date_label(timestamp: float, span: float | None = None) -> str:
    """UTC date for ticks over a span of days, minutes for short spans, both when alone."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    if span is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d" if span >= 2 * 86400 else "%m-%d %H:%M")


def _top_move(moves: Sequence[MovedGroup], sign: int) -> str:
    """The group of the largest rise (sign=1) or fall (sign=-1) of a change point, or ''."""
    ranked = sorted(moves, key=lambda m: sign * (m.after - m.before), reverse=True)
    return ranked[0].group if ranked else ""


def describe_moves(moves: Sequence[MovedGroup]) -> str:
    """``drama 15%→55%, comedy 55%→15%`` from a change point's moved groups."""
    return ", ".join(f"{m.group} {m.before:.0%}→{m.after:.0%}" for m in moves) or "none"


def _change_point_marks(box: Box, points: Sequence[ChangePointRecord], to_x, width: float) -> str:
    """Dashed verticals labelled with the top rising (▲) and falling (▼) group."""
    parts = []
    for i, point in enumerate(sorted(points, key=lambda p: p.timestamp)):
        px = to_x(point.timestamp)
        rose, fell = _top_move(point.rose, 1), _top_move(point.fell, -1)
        marks = [f"▲{shorten(rose, 16)}" if rose else "", f"▼{shorten(fell, 16)}" if fell else ""]
        label = " ".join(mark for mark in marks if mark) or "change"
        half = len(label) * CHAR_WIDTH / 2
        tx = min(max(px, half + 2), width - half - 2)
        detail = (
            f"change point {_date_label(point.timestamp)} UTC, score {point.score:.3f}; "
            f"rose: {describe_moves(point.rose)}; fell: {describe_moves(point.fell)}"
        )
        parts.append(
            f'<g class="change-point"><title>{esc(detail)}</title><line x1="{px:.1f}" '
            f'x2="{px:.1f}" y1="{box.top - 4:.1f}" y2="{box.bottom:.1f}" stroke="#222" '
            f'stroke-width="1.5" stroke-dasharray="5 4"/><text class="cp-label" x="{tx:.1f}" '
            f'y="{box.top - 8 - 14 * (i % 2):.1f}" text-anchor="middle">{esc(label)}</text></g>'
        )
    return "".join(parts)


def _forecast_bar(box: Box, shares: Sequence[float], names, colors, hatch: str) -> str:
    """The predicted next window as one hatched, lighter stacked bar right of the trajectory."""
    x, bar_width, bottom = box.right + 22, 36, 0.0
    parts = [
        f'<line x1="{box.right + 11:.1f}" x2="{box.right + 11:.1f}" y1="{box.top:.1f}" '
        f'y2="{box.bottom:.1f}" stroke="#999" stroke-dasharray="2 3"/>',
        f'<text class="forecast-label" x="{x + bar_width / 2:.1f}" y="{box.top - 8:.1f}" '
        f'text-anchor="middle">forecast</text>',
    ]
    for name, share in zip(names, shares):
        top = min(bottom + share, 1.0)
        y_top, y_bottom = box.y(top, 0, 1), box.y(bottom, 0, 1)
        parts.append(
            f'<rect class="forecast" x="{x}" y="{y_top:.1f}" width="{bar_width}" '
            f'height="{y_bottom - y_top:.1f}" fill="{esc(colors[name])}" fill-opacity="0.55">'
            f"<title>forecast {esc(name)}: {share:.1%}</title></rect>"
        )
        bottom = top
    parts.append(
        f'<rect x="{x}" y="{box.top:.1f}" width="{bar_width}" height="{box.height:.1f}" '
        f'fill="url(#{esc(hatch)})" stroke="#666" stroke-dasharray="3 2"/>'
    )
    return "".join(parts)


def _area_paths(box: Box, xs: Sequence[float], columns, names, colors) -> str:
    """One closed path per group: its upper edge left to right, then its lower edge back."""
    parts, lower = [], [0.0] * len(xs)
    for g, name in enumerate(names):
        upper = [min(low + col[g], 1.0) for low, col in zip(lower, columns)]
        top = [f"{x:.1f},{box.y(v, 0, 1):.1f}" for x, v in zip(xs, upper)]
        base = [f"{x:.1f},{box.y(v, 0, 1):.1f}" for x, v in zip(reversed(xs), reversed(lower))]
        parts.append(
            f'<path class="area" d="M{" L".join(top + base)} Z" fill="{esc(colors[name])}">'
            f"<title>{esc(name)}</title></path>"
        )
        lower = upper
    return "".join(parts)


def _time_scale(box: Box, window_starts: Sequence[int]):
    """Window start time -> x, and date ticks; one instant (W=1) maps to the middle of the box."""
    t_lo, t_hi = min(window_starts), max(window_starts)
    if t_hi == t_lo:
        center = box.left + box.width / 2
        return (lambda t: center), [(center, _date_label(t_lo))]
    fractions = [i / 5 for i in range(6)]
    ticks = [
        (box.left + box.width * f, _date_label(t_lo + (t_hi - t_lo) * f, t_hi - t_lo))
        for f in fractions
    ]
    return (lambda t: box.x(min(max(t, t_lo), t_hi), t_lo, t_hi)), ticks


def _window_marks(box: Box, to_x, window_starts, window_counts) -> str:
    """A dot per window start on the time axis; hovering shows its date and event count."""
    counts = window_counts or [None] * len(window_starts)
    parts = []
    for i, (t, count) in enumerate(zip(window_starts, counts)):
        detail = f"window {i + 1}: starts {_date_label(t)} UTC"
        detail += f", {count} events" if count is not None else ""
        parts.append(
            f'<circle class="window-mark" cx="{to_x(t):.1f}" cy="{box.bottom:.1f}" r="2.5" '
            f'fill="#333"><title>{esc(detail)}</title></circle>'
        )
    return "".join(parts)


def _hatch_pattern(hatch: str) -> str:
    return (
        f'<defs><pattern id="{esc(hatch)}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" '
        f'stroke-width="2.5"/></pattern></defs>'
    )


def _interest_legend(box: Box, width, names, colors, hatch, forecast: bool, change: bool):
    """Groups shown (minor ones are in "other"), then the forecast and change-point keys."""

    def swatch(x: float, y: float, key: tuple[str, str]) -> str:
        kind, name = key
        if kind == "change":
            return (
                f'<line x1="{x + 7:.1f}" x2="{x + 7:.1f}" y1="{y - 1:.1f}" y2="{y + 13:.1f}" '
                f'stroke="#222" stroke-width="1.5" stroke-dasharray="4 3"/>'
            )
        fill = colors[name] if kind == "group" else "#888"
        rect = f'<rect x="{x}" y="{y}" width="14" height="12" fill="{fill}"/>'
        hatched = f'<rect x="{x}" y="{y}" width="14" height="12" fill="url(#{esc(hatch)})"/>'
        return rect + (hatched if kind == "forecast" else "")

    items = [(name, ("group", name)) for name in names]
    items += [("forecast (next window)", ("forecast", ""))] if forecast else []
    items += [("change point", ("change", ""))] if change else []
    return layout_legend(items, box.left, box.bottom + 44, width - box.left, swatch)


def stacked_area_svg(
    groups: Sequence[str],
    window_starts: Sequence[int],
    profiles: Sequence[Sequence[float]],
    *,
    window_counts: Sequence[int] | None = None,
    change_points: Sequence[ChangePointRecord] = (),
    forecast: Sequence[float] | None = None,
    colors: Mapping[str, str] | None = None,
    title: str = "",
    chart_id: str = "interests",
    width: int = 800,
    plot_height: int = 220,
) -> str:
    """A user's interest shares over time (x = window start date), change points and forecast.

    Args:
        groups, window_starts, profiles: the trajectory ([G], [W], [W][G]); W may be 1.
        window_counts: [W] events per window, shown on hover of the window marks.
        change_points: the user's change points (time, score, groups that rose and fell).
        forecast: [G] predicted next-window shares, drawn as a hatched bar on the right.
        colors: group name -> colour, shared across users; missing names get palette colours.
        chart_id: unique per page; prefixes the SVG ids (the hatch pattern).

    Raises:
        ValueError: when the shapes of groups, window starts, profiles and forecast disagree.
    """
    _check_trajectory(groups, window_starts, profiles, forecast)
    names, rows, shares = merge_minor_groups(
        groups,
        [_normalise(row) for row in profiles],
        _normalise(forecast) if forecast is not None else None,
    )
    palette = group_colors([names])
    colors = {name: (colors or {}).get(name, palette[name]) for name in names}
    hatch = f"{chart_id}-hatch"
    box = Box(left=56, top=56, width=width - 56 - (80 if shares else 40), height=plot_height)
    to_x, x_ticks = _time_scale(box, window_starts)
    xs = [to_x(t) for t in window_starts]
    if max(xs) == min(xs):  # one window: a narrow band, so the stack still reads as areas
        xs, rows = [xs[0] - 24, xs[0] + 24], [rows[0], rows[-1]]
    y_ticks = [(box.y(t, 0, 1), f"{t:.0%}") for t in (0, 0.25, 0.5, 0.75, 1)]
    parts = [
        _hatch_pattern(hatch),
        _area_paths(box, xs, rows, names, colors),
        axes(box, x_ticks, y_ticks, "window start (UTC)", "share of events"),
        _window_marks(box, to_x, window_starts, window_counts),
        _change_point_marks(box, change_points, to_x, width),
        _forecast_bar(box, shares, names, colors, hatch) if shares else "",
    ]
    legend, legend_height = _interest_legend(
        box, width, names, colors, hatch, shares is not None, bool(change_points)
    )
    parts.append(legend)
    height = box.bottom + 50 + legend_height
    return svg_element(width, height, "".join(parts), "stacked-area", title)
