"""Forecasts of a user's next interest profile, and the analysis of one user's interests.

The forecast is the model's next-item distribution (a softmax over the whole catalogue, at a
fitted temperature) summed by interest group, optionally blended with the exponentially
decayed profile: ``blend * model + (1 - blend) * decayed``. ``blend``, the temperature and
the decay's half-life are fitted on validation data (:mod:`recsys_dist.interests.evaluate`)
and stored with the run, so the same forecast is served offline, in the report and online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from recsys_dist import run_layout, schema, storage
from recsys_dist.config import InterestConfig
from recsys_dist.data.catalogue import catalogue_dir, read_categories
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.inference.predictor import Recommender
from recsys_dist.interests.drift import change_points, drift_score
from recsys_dist.interests.groups import InterestGroups, build_groups
from recsys_dist.interests.profiles import decayed_profile, normalise, trajectory
from recsys_dist.interests.record import InterestRecord, from_analysis

DEFAULT_HALF_LIFE = 10.0  # events, when nothing was fitted


@dataclass(frozen=True)
class Calibration:
    """How the forecast mixes the model with recent behaviour (fitted on validation data)."""

    blend: float = 1.0
    half_life: float = DEFAULT_HALF_LIFE
    temperature: float = 1.0  # softmax temperature of the model's next-item scores

    @classmethod
    def of_run(cls, run_dir: str, config: InterestConfig) -> Calibration:
        """The run's fitted calibration (``RUN/interests.json``), overridden by explicit
        ``interests.blend`` / ``interests.half_life`` settings."""
        path = run_layout.interests_file(run_dir)
        fitted = storage.read_json(path)["calibration"] if storage.exists(path) else {}
        calibration = cls(**fitted)
        blend = config.blend if config.blend >= 0 else calibration.blend
        half_life = config.half_life or calibration.half_life
        return cls(blend, half_life, calibration.temperature)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelEvents:
    """A user's events in a prepared dataset's item indices → the model's, dropping (and
    counting) items the model does not know: a dataset prepared after the model (appended
    data grows its vocabulary) still analyses with it."""

    index: np.ndarray  # data vocabulary index -> model vocabulary index, -1 if unknown

    def __call__(self, items, times) -> tuple[np.ndarray, np.ndarray, int]:
        mapped = self.index[np.asarray(items, np.int64)]
        known = mapped >= 0
        return mapped[known], np.asarray(times, np.int64)[known], int((~known).sum())


class InterestAnalyzer:
    """A model, its interest groups and a calibration: analyses batches of users.

    Built once per Ray Data actor or Serve replica (it loads the model and the catalogue).
    """

    def __init__(
        self,
        recommender: Recommender,
        categories: dict[str, list[str]] | None,
        config: InterestConfig,
        calibration: Calibration,
    ) -> None:
        self.recommender = recommender
        self.config = config
        self.calibration = calibration
        embeddings = recommender.model.item_table().detach().float().cpu().numpy()
        self.groups: InterestGroups = build_groups(
            recommender.vocab, categories, embeddings, config.clusters, config.seed
        )

    @classmethod
    def for_run(cls, run_dir: str, prepared_dir: str, config: InterestConfig) -> InterestAnalyzer:
        """The run's model with the catalogue of ``prepared_dir``'s source data."""
        recommender = Recommender(run_layout.model_dir(run_dir))
        categories = read_categories(catalogue_dir(prepared_dir))
        return cls(recommender, categories, config, Calibration.of_run(run_dir, config))

    def events_of(self, prepared_dir: str) -> ModelEvents:
        """Maps ``prepared_dir``'s item indices to this model's (see :class:`ModelEvents`)."""
        data_vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
        known = self.recommender.vocab.to_indices(data_vocab.item_ids)
        return ModelEvents(np.concatenate([np.full(schema.NUM_SPECIAL_TOKENS, -1), known]))

    def model_profiles(
        self,
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        query_times,
        temperatures: Sequence[float] = (1.0,),
    ) -> np.ndarray:
        """``[T, B, G]`` the model's next-item distribution, at each softmax temperature,
        summed by group. The temperature (fitted on validation data) sharpens or widens the
        distribution: a weak model spreads mass over unlikely items, a sharp one bets on the
        very next event where the window holds several."""
        scores = self.recommender.next_item_scores(histories, times, np.asarray(query_times))
        return np.stack(
            [
                self.groups.aggregate(torch.softmax(scores / t, dim=1)).double().cpu().numpy()
                for t in temperatures
            ]
        )

    def forecast(
        self,
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        query_times,
        calibration: Calibration | None = None,
    ) -> np.ndarray:
        """``[B, G]`` forecasts of the next window (histories: item indices, oldest first)."""
        calibration = calibration or self.calibration
        model = self.model_profiles(histories, times, query_times, [calibration.temperature])[0]
        decayed = np.stack(
            [decayed_profile(self.groups.of_events(h), calibration.half_life) for h in histories]
        )
        return calibration.blend * model + (1 - calibration.blend) * decayed

    def analyse(
        self,
        user_ids: Sequence[str],
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        unknown_items: Sequence[int] | None = None,
    ) -> list[InterestRecord]:
        """Trajectory, drift, change points and forecast of each user (item indices in, oldest
        first; the forecast is made as of the user's last event). ``unknown_items``: events
        per user left out of ``histories`` because the model does not know their item."""
        known = [i for i, h in enumerate(histories) if len(h)]
        forecasts: list[np.ndarray | None] = [None] * len(histories)
        if known:
            made = self.forecast(
                [histories[i] for i in known],
                [times[i] for i in known],
                [int(times[i][-1]) for i in known],
            )
            for row, i in enumerate(known):
                forecasts[i] = made[row]
        unknown = unknown_items if unknown_items is not None else [0] * len(histories)
        return [
            self._one(user, np.asarray(h, np.int64), np.asarray(t, np.int64), forecasts[i], n)
            for i, (user, h, t, n) in enumerate(
                zip(user_ids, histories, times, unknown, strict=True)
            )
        ]

    def _one(
        self, user: str, items: np.ndarray, times: np.ndarray, forecast, unknown: int
    ) -> InterestRecord:
        weights = self.groups.of_events(items)
        path = trajectory(weights, times, self.config)
        recent = int(path.first_event[-self.config.recent_windows :][0]) if len(items) else 0
        return from_analysis(
            user,
            path,
            current=normalise(weights[recent:].sum(axis=0)),
            drift=drift_score(weights, recent),
            points=change_points(weights, times, self.config),
            forecast=forecast,
            names=self.groups.names,
            unknown_items=unknown,
        )
