"""How well the interest forecast predicts what users really do next, against baselines.

Protocol (written next to every figure): each user's **future window** is the first
``interests.future_events`` events after the split point the dataset was prepared with, so the
model never trained on it. With the ``time`` split the validation future starts at the
validation cut (history: everything before it) and the test future at the test cut; with
``loo`` it is the user's held-out events (``data.holdout_events``: one event by default, a
whole window per user with leave-N-out). Users with fewer than
``interests.min_future_events`` future events (``time``) or no history are left out.

For every user the forecast and three baselines — the last window's profile, the long-term
profile and an exponentially decayed profile — are compared with the future window's actual
profile: Jensen–Shannon divergence (lower is better) and top-group accuracy (the forecast's
most likely group is one of the future window's most frequent). The decay's half-life, and the
forecast's blend, softmax temperature and half-life, are chosen on the validation future (the
forecast: lowest JS among the settings at least as accurate as every baseline), then reported
on the test future.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recsys_dist import run_layout, schema, storage
from recsys_dist.config import InterestConfig
from recsys_dist.data.prepared import load_manifest, read_users, split_spec
from recsys_dist.data.sequences import SplitSpec, held_out_start
from recsys_dist.errors import UserInputError
from recsys_dist.interests.drift import js_divergence
from recsys_dist.interests.forecast import Calibration, InterestAnalyzer
from recsys_dist.interests.profiles import decayed_profile, normalise, profile, trajectory

logger = logging.getLogger(__name__)

HALF_LIVES = (2.0, 5.0, 10.0, 20.0, 50.0)  # events
BLENDS = tuple(float(b) for b in np.round(np.linspace(0, 1, 11), 2))
TEMPERATURES = (0.25, 0.5, 1.0, 2.0)
JS, TOP = "js", "top"


def candidates() -> list[str]:
    """Every profile scored per user: baselines, decays and model blends
    (``blend:B:HALF_LIFE:TEMPERATURE``)."""
    names = ["last_window", "long_term"]
    names += [f"decayed:{h}" for h in HALF_LIVES]
    names += [f"blend:{b}:{h}:{t}" for b in BLENDS for h in HALF_LIVES for t in TEMPERATURES]
    return names


def future_split(
    items: np.ndarray, times: np.ndarray, spec: SplitSpec, which: str, config: InterestConfig
) -> tuple[int, int, int] | None:
    """``(history_end, future_end, query_time)`` of one user, or ``None`` if left out."""
    if spec.split == "loo":
        end = held_out_start(len(items), spec, which)
        return (end, end + spec.holdout_events, int(times[end])) if end >= 1 else None
    cut = spec.valid_cut if which == schema.VALID_SPLIT else spec.test_cut
    stop = spec.test_cut if which == schema.VALID_SPLIT else np.iinfo(np.int64).max
    end = int(np.searchsorted(times, cut, side="left"))
    future = int(np.searchsorted(times, stop, side="left")) - end
    future = min(future, config.future_events)
    if end < 1 or future < config.min_future_events:
        return None
    return end, end + future, int(cut)


class CandidateScorer:
    """Ray Data callable: per user, JS divergence and top-group hit of every candidate."""

    def __init__(self, run_dir: str, prepared_dir: str, config: InterestConfig, which: str):
        self.analyzer = InterestAnalyzer.for_run(run_dir, prepared_dir, config)
        self.to_model = self.analyzer.events_of(prepared_dir)
        self.spec = split_spec(load_manifest(prepared_dir))
        self.config, self.which = config, which

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for items, times in zip(batch[schema.ITEMS], batch[schema.TIMESTAMPS], strict=True):
            items, times, _ = self.to_model(items, times)
            cut = future_split(items, times, self.spec, self.which, self.config)
            if cut is not None:
                rows.append((items, times, *cut))
        if not rows:
            return {JS: np.zeros((0, len(candidates()))), TOP: np.zeros((0, len(candidates())))}
        model = self.analyzer.model_profiles(
            [r[0][: r[2]] for r in rows],
            [r[1][: r[2]] for r in rows],
            [r[4] for r in rows],
            TEMPERATURES,
        )
        scored = [self._score(row, model[:, i]) for i, row in enumerate(rows)]
        return {JS: np.stack([s[0] for s in scored]), TOP: np.stack([s[1] for s in scored])}

    def _score(self, row, model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, times, end, future_end, _ = row
        groups = self.analyzer.groups
        history = groups.of_events(items[:end])
        actual = normalise(groups.of_events(items[end:future_end]).sum(axis=0))
        decayed = {h: decayed_profile(history, h) for h in HALF_LIVES}
        profiles = [trajectory(history, times[:end], self.config).profiles[-1], profile(history)]
        profiles += [decayed[h] for h in HALF_LIVES]
        profiles += [
            b * model[k] + (1 - b) * decayed[h]
            for b in BLENDS
            for h in HALF_LIVES
            for k in range(len(TEMPERATURES))
        ]
        stacked = np.stack(profiles)  # [candidates, G]
        top = np.isclose(actual[stacked.argmax(axis=1)], actual.max())
        return js_divergence(stacked, actual[None]), top.astype(np.float64)


def evaluate_interests(
    run_dir: str, prepared_dir: str, config: InterestConfig, save: bool = True
) -> dict[str, Any]:
    """Fit the forecast's blend and the decay on the validation future, report on the test
    future; the fitted calibration is saved as ``RUN/interests.json`` (``save``)."""
    valid = _mean_scores(run_dir, prepared_dir, config, schema.VALID_SPLIT)
    names = candidates()
    pick = {name: i for i, name in enumerate(names)}
    decays = [pick[f"decayed:{h}"] for h in HALF_LIVES]
    best_decay = names[min(decays, key=lambda i: valid[JS][i])]
    blends = [i for i, name in enumerate(names) if name.startswith("blend:")]
    best_blend = names[_fit(valid, blends, [pick["last_window"], pick["long_term"], *decays])]
    _, blend, half_life, temperature = best_blend.split(":")
    calibration = Calibration(float(blend), float(half_life), float(temperature))
    alone = [i for i in blends if names[i].startswith("blend:1.0:")]  # temperature still fitted
    model_only = min(alone, key=lambda i: valid[JS][i])
    methods = {
        "forecast": pick[best_blend],
        "model_only": model_only,
        "last_window": pick["last_window"],
        "long_term": pick["long_term"],
        "decayed": pick[best_decay],
    }
    baselines = {name: methods[name] for name in ("last_window", "long_term", "decayed")}
    test = _mean_scores(
        run_dir, prepared_dir, config, schema.TEST_SPLIT, methods["forecast"], baselines
    )
    result = {
        "protocol": _protocol(prepared_dir, config),
        "users": {"valid": valid["users"], "test": test["users"]},
        "calibration": calibration.to_dict(),
        "decay_half_life": float(best_decay.split(":")[1]),
        "methods": {
            name: {JS: float(test[JS][i]), "top_accuracy": float(test[TOP][i])}
            for name, i in methods.items()
        },
        "forecast_minus_baseline": test["differences"],
        "validation": {
            name: {JS: float(valid[JS][i]), "top_accuracy": float(valid[TOP][i])}
            for name, i in methods.items()
        },
    }
    if save:
        storage.write_json(run_layout.interests_file(run_dir), result)
    return result


def _fit(valid: dict[str, Any], blends: list[int], baselines: list[int]) -> int:
    """The blend with the lowest validation JS among those whose validation top-group accuracy
    is at least every baseline's (a forecast should not lose on either metric); the lowest
    JS overall when none qualifies."""
    floor = max(valid[TOP][i] for i in baselines)
    qualified = [i for i in blends if valid[TOP][i] >= floor] or blends
    return min(qualified, key=lambda i: valid[JS][i])


def _mean_scores(
    run_dir: str,
    prepared_dir: str,
    config: InterestConfig,
    which: str,
    forecast: int | None = None,
    baselines: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Mean JS and top-group hit of every candidate over the users of ``which``; with
    ``forecast`` and ``baselines`` (candidate indices) also the per-user paired differences
    forecast - baseline, as mean and 95% interval (normal approximation), so "beats" can be
    told from noise."""
    scored = read_users(prepared_dir).map_batches(
        CandidateScorer,
        fn_constructor_args=(run_dir, prepared_dir, config, which),
        batch_size=config.batch_size,
        batch_format="numpy",
        concurrency=1,
    )
    sums = {JS: np.zeros(len(candidates())), TOP: np.zeros(len(candidates()))}
    paired = {(metric, name): np.zeros(2) for metric in (JS, TOP) for name in baselines or {}}
    count = 0
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for metric in (JS, TOP):
            sums[metric] += batch[metric].sum(axis=0)
            for name, index in (baselines or {}).items():
                difference = batch[metric][:, forecast] - batch[metric][:, index]
                paired[metric, name] += [difference.sum(), (difference**2).sum()]
        count += len(batch[JS])
    if not count:
        raise UserInputError(
            f"{prepared_dir}: no user has a {which} future window to evaluate "
            f"(at least interests.min_future_events={config.min_future_events} held-out events)"
        )
    differences: dict[str, dict] = {}
    for (metric, name), (total, squares) in paired.items():
        mean = total / count
        sd = np.sqrt(max(squares / count - mean**2, 0.0) * count / max(count - 1, 1))
        half = 1.96 * sd / np.sqrt(count)
        key = "js" if metric == JS else "top_accuracy"
        differences.setdefault(name, {})[key] = [mean - half, mean, mean + half]
    means = {JS: sums[JS] / count, TOP: sums[TOP] / count}
    return {**means, "users": count, "differences": differences}


def _protocol(prepared_dir: str, config: InterestConfig) -> str:
    spec = split_spec(load_manifest(prepared_dir))
    if spec.split == "time":
        future = (
            f"the first {config.future_events} events after the split's cut "
            f"(users with at least {config.min_future_events})"
        )
    elif spec.holdout_events > 1:
        future = f"each user's last {spec.holdout_events} events (held out of training)"
    else:
        future = "the held-out next event"
    return (
        f"{spec.split} split; future window = {future}; history = everything before it; "
        f"windows of {config.window_size} {config.window}; JS divergence in bits between "
        "predicted and actual group distribution (lower is better); top-group accuracy "
        "(higher is better); blend, temperature and half-lives chosen on the validation "
        "future (lowest JS among settings at least as accurate as every baseline)"
    )
