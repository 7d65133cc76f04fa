"""The report's metric tables, each with what it was evaluated on written above it as a sentence.

Every figure in a table has the table's one precision (:func:`figures.figure`) and sits in a
right-aligned ``td.num`` cell, so columns line up; the better value of a row or column is
bold when which way is better is known, judged on the figures as shown (a tie shown is a tie).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from recsys_dist.report.figures import (
    METRIC_DECIMALS,
    SPLIT_WORDS,
    figure,
    is_number,
    plural,
    readable,
    users_by_split,
    words,
)
from recsys_dist.report.svg import esc

Row = tuple[str, list, list[bool]]  # (label, values, which cells to bold)

_INTEREST_COLUMNS = {  # key -> (header, True when higher is better)
    "js": ("JS divergence (lower is better)", False),
    "top_accuracy": ("top-category accuracy (higher is better)", True),
}
_METHODS = {  # interest forecast methods (interests/evaluate.py) -> their names on the page
    "forecast": "forecast (model blended with recent behaviour)",
    "model_only": "model only",
    "last_window": "last window",
    "long_term": "long-term profile",
    "decayed": "decayed profile",
}
_METRIC_NAMES = {"hr": "HR", "ndcg": "NDCG", "mrr": "MRR", "map": "MAP"}
# Beyond-accuracy rows (recsys_dist/evaluation/beyond.py): key -> label saying which way is which.
_BEYOND_ROWS = {
    "coverage": "item coverage (share of the catalogue recommended)",
    "popularity_percentile": "popularity percentile of recommended items (lower: less popular)",
    "exposure_gini": "Gini of exposure (lower: spread more evenly)",
    "novelty": "novelty, bits (higher: less obvious)",
    "intra_list_diversity": "intra-list category diversity (higher: more varied lists)",
}
# Rating baselines (recsys_dist/evaluation/ratings.py BASELINES) -> their names on the page.
_RATING_BASELINES = {
    "global_mean": "global mean baseline",
    "biases": "user and item biases baseline",
    "svd": "matrix factorisation (SVD) baseline",
}


def metric_order(name: str) -> tuple[str, int, str]:
    """Sort ``ndcg@5 < ndcg@10 < ndcg@20`` numerically, families alphabetically."""
    base, _, k = name.partition("@")
    return base, int(k) if k.isdigit() else 0, name


def _metric_label(name: str) -> str:
    base, at, k = name.partition("@")
    return f"{_METRIC_NAMES.get(base, readable(base))}{at}{k}"


def _cell(value: object, decimals: int, bold: bool) -> str:
    """A right-aligned figure; a ``(low, high)`` pair is an interval, ``low to high``."""
    if isinstance(value, tuple):
        shown = " to ".join(figure(v, decimals) for v in value)
    else:
        shown = figure(value, decimals)
    return f'<td class="num{" best" if bold else ""}">{shown}</td>'


def table_html(header: Sequence[str], rows: Sequence[Row], decimals: int) -> str:
    """A table whose first column names the rows and whose other cells are figures, all
    with ``decimals`` places."""
    head = f"<th>{esc(header[0])}</th>" + "".join(
        f'<th class="num">{esc(h)}</th>' for h in header[1:]
    )
    body = "".join(
        f"<tr><td>{esc(label)}</td>"
        + "".join(_cell(v, decimals, bold) for v, bold in zip(values, best))
        + "</tr>"
        for label, values, best in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def best_cells(values: Sequence[object], higher_is_better: bool, decimals: int) -> list[bool]:
    """Which of ``values`` show the best figure (none when fewer than two have one)."""
    shown = [round(v, decimals) if is_number(v) else None for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2:
        return [False] * len(values)
    best = max(present) if higher_is_better else min(present)
    return [v is not None and v == best for v in shown]


def protocol_html(*sentences: str) -> str:
    """What a table was evaluated on, as one paragraph of sentences."""
    shown = " ".join(esc(s) for s in sentences if s)
    return f'<p class="protocol">{shown}</p>' if shown else ""


def _protocol_sentence(protocol: object) -> str:
    if protocol in (None, ""):
        return ""
    text = words(protocol).rstrip(".")
    return f"Protocol: {text}."


def _evaluated_on(users: object, split: object = None) -> str:
    """``Evaluated on 943 users of the test split.``"""
    who = users_by_split(users)
    where = f"the {SPLIT_WORDS.get(str(split), words(split))} split" if split else ""
    if who and where:
        return f"Evaluated on {who} of {where}."
    return f"Evaluated on {who or where}." if who or where else ""


def _baselines(metrics: Mapping) -> dict[str, Mapping]:
    """``baseline_popularity`` -> ``popularity baseline``: its figures."""
    return {
        key.removeprefix("baseline_").replace("_", " ") + " baseline": value
        for key, value in metrics.items()
        if key.startswith("baseline_") and isinstance(value, Mapping)
    }


def ranking_table_html(metrics: Mapping) -> str:
    """Model vs each ``baseline_*`` on every ranking metric, better value per row in bold."""
    baselines = _baselines(metrics)
    known = {key for baseline in baselines.values() for key in baseline}
    names = {k for k, v in metrics.items() if is_number(v) and ("@" in k or k in known)}
    names.discard("users")
    rows = []
    for name in sorted(names, key=metric_order):
        values = [metrics[name]] + [b.get(name) for b in baselines.values()]
        best = best_cells(values, "loss" not in name, METRIC_DECIMALS)
        rows.append((_metric_label(name), values, best))
    sentences = protocol_html(
        _evaluated_on(metrics.get("users"), metrics.get("split")),
        _protocol_sentence(metrics.get("protocol")),
    )
    return sentences + table_html(["metric", "model", *baselines], rows, METRIC_DECIMALS)


def beyond_table_html(metrics: Mapping) -> str:
    """What the model's and each baseline's top-k lists do to the catalogue; no value is
    bold: which is better depends on what the lists are for."""
    sides = {"model": metrics.get("beyond_accuracy")} | {
        name: value.get("beyond_accuracy") for name, value in _baselines(metrics).items()
    }
    sides = {name: figures for name, figures in sides.items() if isinstance(figures, Mapping)}
    if "model" not in sides:
        return ""
    rows = [
        (label, [figures.get(key) for figures in sides.values()], [False] * len(sides))
        for key, label in _BEYOND_ROWS.items()
    ]
    k = sides["model"].get("k")
    lists = f"top-{k}" if is_number(k) else "top-k"
    sentence = f"The {lists} lists of the same users and candidates."
    return protocol_html(sentence) + table_html(["figure", *sides], rows, METRIC_DECIMALS)


def ratings_table_html(ratings: Mapping) -> str:
    """RMSE and MAE of the model's rating head beside the classic baselines (lower is
    better, best per column in bold); a sentence alone when no held-out event is rated."""
    rated = ratings.get("rated_targets")
    evaluated = (
        f"Evaluated on {plural(int(rated), 'held-out rated event')}." if is_number(rated) else ""
    )
    protocol = _protocol_sentence(ratings.get("protocol"))
    if not isinstance(ratings.get("model"), Mapping):
        return protocol_html("No held-out event carries a rating: no rating error to show.")
    sides = {"model": ratings["model"]} | {
        _RATING_BASELINES.get(name, f"{readable(name)} baseline"): errors
        for name, errors in (ratings.get("baselines") or {}).items()
        if isinstance(errors, Mapping)
    }
    columns = {"rmse": "RMSE (lower is better)", "mae": "MAE (lower is better)"}
    best = {
        key: best_cells([e.get(key) for e in sides.values()], False, METRIC_DECIMALS)
        for key in columns
    }
    rows = [
        (name, [errors.get(key) for key in columns], [best[key][i] for key in columns])
        for i, (name, errors) in enumerate(sides.items())
    ]
    return protocol_html(evaluated, protocol) + table_html(
        ["predictor", *columns.values()], rows, METRIC_DECIMALS
    )


def _interest_users(users: object) -> str:
    sentence = _evaluated_on(users)
    if isinstance(users, Mapping) and {"test", "valid"} <= set(users):
        sentence = sentence.rstrip(".") + (
            ": the forecast's settings were chosen on the validation users, the figures "
            "below are the test users'."
        )
    return sentence


def _calibration_sentence(metrics: Mapping) -> str:
    """The fitted forecast settings (``RUN/interests.json``) in words."""
    fitted = metrics.get("calibration")
    if not isinstance(fitted, Mapping):
        return ""
    parts = []
    if is_number(fitted.get("blend")):
        parts.append(f"weight {words(fitted['blend'])} on the model's prediction")
    if is_number(fitted.get("temperature")):
        parts.append(f"softmax temperature {words(fitted['temperature'])}")
    if is_number(fitted.get("half_life")):
        parts.append(f"the decayed profile's half-life {words(fitted['half_life'])} events")
    if not parts:
        return ""
    return f"The forecast blends the model with the user's decayed profile: {', '.join(parts)}."


def interest_table_html(metrics: Mapping) -> str:
    """Forecasting methods × JS divergence and top-category accuracy, best per column in bold."""
    methods = metrics.get("methods") or {}
    methods = {name: m for name, m in methods.items() if isinstance(m, Mapping)}
    keys = [k for k in _INTEREST_COLUMNS if any(k in m for m in methods.values())]
    keys += sorted({k for m in methods.values() for k, v in m.items() if is_number(v)} - set(keys))
    columns = {key: [m.get(key) for m in methods.values()] for key in keys}
    best = {
        key: best_cells(values, _INTEREST_COLUMNS[key][1], METRIC_DECIMALS)
        if key in _INTEREST_COLUMNS
        else [False] * len(values)
        for key, values in columns.items()
    }
    rows = [
        (
            _METHODS.get(method, readable(method)),
            [columns[k][i] for k in keys],
            [best[k][i] for k in keys],
        )
        for i, method in enumerate(methods)
    ]
    header = ["method", *(_INTEREST_COLUMNS.get(k, (readable(k),))[0] for k in keys)]
    sentences = protocol_html(
        _interest_users(metrics.get("users")),
        _protocol_sentence(metrics.get("protocol")),
        _calibration_sentence(metrics),
    )
    return sentences + table_html(header, rows, METRIC_DECIMALS) + _differences_html(metrics)


def _interval(value: object) -> tuple[object, object, object]:
    """``[low, mean, high]`` as written by ``interests/evaluate.py`` (else all missing)."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        return value[0], value[1], value[2]
    return None, None, None


def _differences_html(metrics: Mapping) -> str:
    """Forecast minus each baseline, per test user: the mean and its 95% interval."""
    differences = metrics.get("forecast_minus_baseline")
    if not isinstance(differences, Mapping) or not differences:
        return ""
    header = ["forecast minus", "JS divergence difference", "95% interval"]
    header += ["top-category accuracy difference", "95% interval"]
    rows = []
    for baseline, by_metric in differences.items():
        by_metric = by_metric if isinstance(by_metric, Mapping) else {}
        values = []
        for key in ("js", "top_accuracy"):
            low, mean, high = _interval(by_metric.get(key))
            values += [mean, (low, high)]
        rows.append((_METHODS.get(baseline, readable(baseline)), values, [False] * len(values)))
    sentence = (
        "The forecast minus each baseline, paired per user: the mean and its 95% interval "
        "(normal approximation). A negative JS difference and a positive accuracy "
        "difference favour the forecast; an interval that excludes 0 is beyond noise."
    )
    return protocol_html(sentence) + table_html(header, rows, METRIC_DECIMALS)
