"""Rating prediction error (RMSE, MAE) of the model and of the classic baselines, paired.

The held-out events are the ranking protocol's own: each user's validation or test target,
counted where it carries a rating (a per-user temporal hold-out of the last rated event, in
the leave-one-out split). The baselines are fitted on exactly the ratings the model reads at
evaluation time: every user's events before the held-out one (the rows' histories), so
neither side sees more than the other:

* the global mean;
* user and item biases (``surprise.BaselineOnly``, alternating least squares);
* matrix factorisation (``surprise.SVD``, Funk's biased MF by SGD: the Netflix-prize model).

scikit-surprise is a well-kept library, so its models are not rewritten here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from recsys_dist import schema
from recsys_dist.data.batching import evaluation_inputs
from recsys_dist.evaluation.ranking import model_tensors
from recsys_dist.model import Bert4Rec

BASELINES = ("global_mean", "biases", "svd")
PROTOCOL = (
    "each user's held-out event where it has a rating; baselines fitted on every rating "
    "before it (the same histories the model reads)"
)


@dataclass
class Errors:
    """Sums of squared and absolute errors over ``count`` ratings."""

    squared: float = 0.0
    absolute: float = 0.0
    count: int = 0

    def add(self, predicted: np.ndarray, actual: np.ndarray) -> None:
        error = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
        self.squared += float(np.square(error).sum())
        self.absolute += float(np.abs(error).sum())
        self.count += len(error)

    def summary(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {
            "rmse": round((self.squared / count) ** 0.5, 4),
            "mae": round(self.absolute / count, 4),
        }


@dataclass
class HeldOut:
    """The rated held-out events and the ratings before them, gathered in one pass."""

    users: list[str] = field(default_factory=list)
    items: list[np.ndarray] = field(default_factory=list)
    actual: list[np.ndarray] = field(default_factory=list)
    model: Errors = field(default_factory=Errors)
    history: list[pd.DataFrame] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """``user, item, rating`` of every rated history event (the baselines' training set)."""
        if not self.history:
            return pd.DataFrame({"user": [], "item": [], "rating": []})
        return pd.concat(self.history, ignore_index=True)


@torch.no_grad()
def rating_errors(
    model: Bert4Rec, batches: Iterable[dict[str, np.ndarray]], device: torch.device
) -> dict[str, object]:
    """RMSE/MAE of ``model``'s rating head and of the baselines on the rows of ``batches``
    (validation or test rows with ``ratings`` and ``target_rating``)."""
    held_out = HeldOut()
    for batch in batches:
        _add_batch(model, batch, device, held_out)
    result: dict[str, object] = {"rated_targets": held_out.model.count, "protocol": PROTOCOL}
    if not held_out.model.count:
        return result
    result["model"] = held_out.model.summary()
    result["baselines"] = baseline_errors(
        held_out, model.config.rating_min, model.config.rating_max
    )
    return result


def _add_batch(model: Bert4Rec, batch: dict, device: torch.device, held_out: HeldOut) -> None:
    chosen = _rated_rows(model, batch)
    if chosen is None:
        return
    actual = np.asarray(chosen[schema.TARGET_RATING], np.float32)
    targets = np.asarray(chosen[schema.TARGET_ITEM], np.int64)
    held_out.model.add(_predicted(model, chosen, device), actual)
    held_out.users.extend(str(u) for u in chosen[schema.USER_ID])
    held_out.items.append(targets)
    held_out.actual.append(actual)
    held_out.history.append(_rated_history(chosen))


def tally_rating_errors(
    model: Bert4Rec,
    batches: Iterable[dict[str, np.ndarray]],
    errors: Errors,
    device: torch.device,
) -> Iterator[dict[str, np.ndarray]]:
    """Pass ``batches`` on unchanged, adding the model's own squared/absolute errors on each
    one's rated rows to ``errors`` (no baselines: cheap enough for every validation during
    training). Chained in front of the ranking, one read of the rows serves both."""
    for batch in batches:
        chosen = _rated_rows(model, batch)
        if chosen is not None:
            with torch.no_grad():
                errors.add(_predicted(model, chosen, device), chosen[schema.TARGET_RATING])
        yield batch


def _rated_rows(model: Bert4Rec, batch: dict) -> dict[str, np.ndarray] | None:
    """The rows whose target carries a rating and is an item the model knows (None: none)."""
    actual = np.asarray(batch[schema.TARGET_RATING], np.float32)
    targets = np.asarray(batch[schema.TARGET_ITEM], np.int64)
    rated = ~np.isnan(actual) & (targets < model.config.vocab_size)
    if not rated.any():
        return None
    return {name: np.asarray(column)[rated] for name, column in batch.items()}


def _predicted(model: Bert4Rec, rows: dict, device: torch.device) -> np.ndarray:
    """The model's predicted rating of each row's target after the row's history."""
    config = model.config
    inputs = evaluation_inputs(
        rows,
        config.max_len,
        config.num_time_buckets,
        config.use_event_ages,
        config.rating_scale(),
    )
    model.eval()
    items, buckets, ages, rated = model_tensors(inputs, config.vocab_size, device)
    state = model.query_state(items, buckets, ages, rated)
    targets = torch.as_tensor(np.asarray(rows[schema.TARGET_ITEM], np.int64), device=device)
    prior = model.query_rating_prior(rated, items)
    return model.ratings_of_items(state, prior, targets).float().cpu().numpy()


def _rated_history(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    lengths = [len(items) for items in rows[schema.ITEMS]]
    frame = pd.DataFrame(
        {
            "user": np.repeat(np.asarray(rows[schema.USER_ID], dtype=object), lengths),
            "item": np.concatenate(rows[schema.ITEMS]).astype(np.int64),
            "rating": np.concatenate(rows[schema.RATINGS]).astype(np.float64),
        }
    )
    return frame[frame["rating"].notna()]


def baseline_errors(held_out: HeldOut, low: float, high: float) -> dict[str, dict[str, float]]:
    """RMSE/MAE of each baseline fitted on the held-out users' earlier ratings."""
    from surprise import SVD, BaselineOnly, Dataset, Reader  # a second or so to import

    history = held_out.frame()
    items = np.concatenate(held_out.items)
    actual = np.concatenate(held_out.actual)
    errors = {name: Errors() for name in BASELINES}
    errors["global_mean"].add(np.full(len(actual), history["rating"].mean()), actual)
    data = Dataset.load_from_df(
        history[["user", "item", "rating"]], Reader(rating_scale=(low, high))
    )
    trainset = data.build_full_trainset()
    for name, algo in (("biases", BaselineOnly(verbose=False)), ("svd", SVD(random_state=0))):
        algo.fit(trainset)
        predicted = [
            algo.predict(u, int(i)).est for u, i in zip(held_out.users, items, strict=True)
        ]
        errors[name].add(np.asarray(predicted), actual)
    return {name: e.summary() for name, e in errors.items()}
