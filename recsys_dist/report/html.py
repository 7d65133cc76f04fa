"""One self-contained HTML page for a run: no script, no network, openable straight from disk.

Charts are inline SVG drawn by ``recsys_dist.report.svg``/``trajectory``; the stylesheet is a
``<style>`` block and a Content-Security-Policy forbids any fetch, so the page looks the same
offline and an escaped-but-hostile user id could not load or run anything even if missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from recsys_dist.interests.record import InterestRecord
from recsys_dist.report.data import ReasonShown, RecommendationShown, ReportData
from recsys_dist.report.figures import SCORE_DECIMALS, figure, is_number, plural, words
from recsys_dist.report.svg import esc, histogram_svg, line_chart_svg
from recsys_dist.report.tables import (
    beyond_table_html,
    interest_table_html,
    metric_order,
    ranking_table_html,
    ratings_table_html,
)
from recsys_dist.report.trajectory import describe_moves, group_colors, stacked_area_svg

__all__ = [
    "beyond_table_html",
    "histogram_svg",
    "interest_table_html",
    "line_chart_svg",
    "page_title",
    "ranking_table_html",
    "ratings_table_html",
    "recommendations_html",
    "render_report",
    "stacked_area_svg",
    "training_families",
]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# Text cells read left-aligned; figures (``td.num``, with their headers) right-aligned in
# tabular digits, so a column's decimal points line up.
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 860px; margin: 24px auto; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
h3 { margin: 24px 0 4px; font-size: 16px; }
.meta, .protocol { color: #555; } .protocol { font-style: italic; }
code { background: #f3f3f3; padding: 0 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e5e5e5; text-align: left;
         vertical-align: top; }
td.best { font-weight: 700; }
svg.chart { display: block; max-width: 100%; height: auto; margin: 8px 0; }
svg.chart text { font-size: 12px; font-family: inherit; }
svg.chart .chart-title { font-size: 13px; font-weight: 600; }
svg.chart .grid { stroke: #eee; } svg.chart .axis { stroke: #999; }
svg.chart .series { stroke-width: 2; } svg.chart .axis-label { fill: #555; }
ul.change-points { margin: 0; color: #444; font-size: 13px; }
h4 { margin: 16px 0 4px; font-size: 14px; }
ul.because { margin: 0; padding-left: 16px; color: #444; font-size: 13px; }
table th.num, table td.num { text-align: right; font-variant-numeric: tabular-nums;
                             white-space: nowrap; }
"""


def training_families(rows: Sequence[Mapping]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Curves grouped one chart per family: every ``*loss*`` key together, and ``split_metric@K``.

    Bookkeeping columns (elapsed time, throughput, counts, checksums) are not curves and are left
    out; x is the row's ``epoch`` when present, else its position.
    """
    families: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for position, row in enumerate(rows, start=1):
        x = row.get("epoch", position)
        for key in sorted(row, key=metric_order):
            if not is_number(row[key]) or not is_number(x):
                continue
            if "loss" in key:
                family = "loss"
            elif "@" in key:
                family = key.partition("@")[0] + "@K"
            else:
                continue
            families.setdefault(family, {}).setdefault(key, []).append((x, row[key]))
    return dict(sorted(families.items(), key=lambda item: (item[0] != "loss", item[0])))


def page_title(data: ReportData) -> str:
    """``recsys_dist report — model VERSION on DATASET``: what the numbers are of, never the
    run directory's bare name; the page's ``<title>`` and its heading alike."""
    return f"recsys_dist report — model {words(data.model_version)} on {words(data.dataset)}"


def _header(data: ReportData) -> str:
    facts = [f"model version <code>{esc(data.model_version)}</code>"]
    facts.append(f"data <code>{esc(data.data_path)}</code>" if data.data_path else "")
    facts.append(f"run <code>{esc(data.run)}</code>" if data.run else "")
    facts.append(f"generated {esc(data.generated_at)}")
    meta = " · ".join(fact for fact in facts if fact)
    return f'<header><h1>{esc(page_title(data))}</h1><p class="meta">{meta}</p></header>'


def _training_section(rows: Sequence[Mapping]) -> str:
    families = training_families(rows)
    if not families:
        return ""
    x_label = "epoch" if any("epoch" in row for row in rows) else "report"
    charts = "".join(
        line_chart_svg(series, title=family, x_label=x_label, y_label=family)
        for family, series in families.items()
    )
    return f'<section id="training"><h2>Training curves</h2>{charts}</section>'


def _metrics_section(data: ReportData) -> str:
    parts = []
    if data.ranking_metrics:
        parts.append(f"<h3>Next-item ranking</h3>{ranking_table_html(data.ranking_metrics)}")
        beyond = beyond_table_html(data.ranking_metrics)
        if beyond:
            parts.append(f"<h3>Beyond accuracy</h3>{beyond}")
        ratings = data.ranking_metrics.get("ratings")
        if isinstance(ratings, Mapping):
            parts.append(f"<h3>Rating prediction</h3>{ratings_table_html(ratings)}")
    if data.interest_metrics:
        parts.append(f"<h3>Interest forecast</h3>{interest_table_html(data.interest_metrics)}")
    return f'<section id="metrics"><h2>Metrics</h2>{"".join(parts)}</section>' if parts else ""


def _change_point_list(user: InterestRecord) -> str:
    if not user.change_points:
        return '<p class="meta">No change points detected.</p>'
    items = []
    for point in sorted(user.change_points, key=lambda p: p.timestamp):
        items.append(
            f"<li>{esc(_utc(point.timestamp))}: score {point.score:.3f}; "
            f"rose: {esc(describe_moves(point.rose))}; "
            f"fell: {esc(describe_moves(point.fell))}</li>"
        )
    return f'<ul class="change-points">{"".join(items)}</ul>'


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _user_section(
    user: InterestRecord,
    groups: Sequence[str],
    index: int,
    colors: Mapping[str, str],
    recommended: Sequence[RecommendationShown] = (),
) -> str:
    chart = stacked_area_svg(
        groups,
        user.window_starts,
        user.profiles,
        window_counts=user.window_counts,
        change_points=user.change_points,
        forecast=user.forecast,
        colors=colors,
        chart_id=f"user-{index}",
    )
    points = len(user.change_points)
    meta = (
        f"drift (JS divergence, recent vs long-term) <b>{user.drift:.3f}</b> · "
        f"{plural(len(user.window_starts), 'window')} · {plural(sum(user.window_counts), 'event')}"
        f" · {plural(points, 'change point')}"
    )
    return (
        f'<article class="user"><h3>User <code>{esc(user.user_id)}</code></h3>'
        f'<p class="meta">{meta}</p>{chart}{_change_point_list(user)}'
        f"{recommendations_html(recommended)}</article>"
    )


def _item_label(item_id: str, title: str | None) -> str:
    return f"{esc(title)} <code>{esc(item_id)}</code>" if title else f"<code>{esc(item_id)}</code>"


def _because_list(reasons: Sequence[ReasonShown]) -> str:
    if not reasons:
        return '<span class="meta">no single event raised its score</span>'
    items = "".join(
        f'<li>{_item_label(r.item_id, r.title)} <span class="meta">{esc(_utc(r.timestamp))}'
        f" · weight {figure(r.weight, SCORE_DECIMALS)} · share {r.share:.0%}</span></li>"
        for r in reasons
    )
    return f'<ul class="because">{items}</ul>'


def recommendations_html(items: Sequence[RecommendationShown]) -> str:
    """A user's top items, each beside the history events it owes its score to (``because
    you …``); empty when there are none, so a page from older data just leaves it out."""
    if not items:
        return ""
    head = (
        '<tr><th class="num">#</th><th>recommended</th><th class="num">score</th>'
        "<th>because you …</th></tr>"
    )
    rows = "".join(
        f'<tr><th scope="row" class="num">{rank}</th>'
        f"<td>{_item_label(item.item_id, item.title)}</td>"
        f'<td class="num">{figure(item.score, SCORE_DECIMALS)}</td>'
        f"<td>{_because_list(item.because)}</td></tr>"
        for rank, item in enumerate(items, start=1)
    )
    return (
        f'<h4>Top recommendations</h4><table class="recommendations"><thead>{head}</thead>'
        f"<tbody>{rows}</tbody></table>"
    )


# Said once above the users: what the numbers beside each "because you …" event mean.
_BECAUSE_NOTE = (
    '<p class="protocol">Each user\'s top recommendations after their whole history, and the '
    "events each owes its score to: weight is the score's drop without the event "
    "(leave-one-out), share its part of the drops of all events that raised the score.</p>"
)


def _users_section(
    groups: Sequence[str],
    users: Sequence[InterestRecord],
    recommendations: Mapping[str, Sequence[RecommendationShown]],
) -> str:
    if not users:
        return ""
    colors = group_colors([groups])
    body = "".join(
        _user_section(user, groups, i, colors, recommendations.get(user.user_id, ()))
        for i, user in enumerate(users)
    )
    note = _BECAUSE_NOTE if any(recommendations.get(u.user_id) for u in users) else ""
    return f'<section id="users"><h2>Users\' interests</h2>{note}{body}</section>'


def _drift_section(scores: Sequence[float]) -> str:
    if not scores:
        return ""
    chart = histogram_svg(
        scores,
        title="Drift of every user",
        x_label="JS divergence (base 2) of the recent vs the long-term interest profile",
    )
    return f'<section id="drift"><h2>Interest drift over all users</h2>{chart}</section>'


def render_report(data: ReportData) -> str:
    """The whole page as one string; sections without data are left out, not drawn empty."""
    body = "".join(
        (
            _header(data),
            _training_section(data.training_curves),
            _metrics_section(data),
            _users_section(data.groups, data.users, data.recommendations),
            _drift_section(data.drift_scores),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(page_title(data))}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
