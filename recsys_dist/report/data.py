"""What the report draws, as plain dataclasses that survive a JSON round trip.

The collector (reading a run directory) and the renderer meet only here, so either can be
tested alone: a test or the CLI can write a ``ReportData`` to JSON and render it later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from recsys_dist.interests.record import InterestRecord, check_keys


@dataclass
class ReasonShown:
    """A history event behind a recommendation (``inference.explain.Because``) with its
    item's catalogue title, so the page can say "because you …" in words."""

    item_id: str
    title: str | None
    timestamp: int
    weight: float  # the recommended item's score drop without this event (logits)
    share: float  # its part of the drops of all events that raised the score (0 to 1)


@dataclass
class RecommendationShown:
    """One of a drawn user's top recommendations and the events it owes its score to."""

    item_id: str
    title: str | None
    score: float
    because: list[ReasonShown]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RecommendationShown:
        """Rebuild from ``asdict`` output; unknown or missing keys raise ``ValueError``."""
        check_keys(cls, raw)
        for reason in raw["because"]:
            check_keys(ReasonShown, reason)
        return cls(**{**raw, "because": [ReasonShown(**r) for r in raw["because"]]})


@dataclass
class ReportData:
    """Everything one report page shows.

    Attributes:
        model_version: version of the model the numbers belong to (the export's
            ``predictor.model_version``: a registry version's id, else data hash and epoch).
        dataset: the data's name (its sources' directory names, e.g. ``ml-1m``); the page is
            titled "model VERSION on DATASET".
        data_path: the prepared dataset the numbers were computed on ("" when unknown).
        run: the run directory ("" when unknown).
        generated_at: ISO timestamp of when the data was collected.
        training_curves: rows of ``RUN/metrics.jsonl`` (keys vary between runs).
        ranking_metrics: ``evaluation.evaluate.evaluate_run``'s result: model metrics with
            ``protocol``/``split``/``users``, ``beyond_accuracy``, a ``baseline_popularity``
            dict of the same metrics and, for a rated model, ``ratings``; or None.
        interest_metrics: ``interests.evaluate.evaluate_interests``'s result: ``protocol``,
            ``users`` (a count, or one per split), ``methods: {name: {"js",
            "top_accuracy"}}``, optionally ``calibration`` and ``forecast_minus_baseline``;
            or None.
        groups: interest group names (catalogue categories or ``"cluster-N"``): the column
            order of every user's profiles and forecast.
        users: a sample of users to draw, as the interest analysis wrote them (their ids and
            the group names are untrusted text; the renderer escapes them).
        drift_scores: drift of every user (for the histogram).
        recommendations: each drawn user's top recommendations and the history events
            behind them, by user id (a user without stored history has none).
    """

    model_version: str
    dataset: str
    data_path: str
    run: str
    generated_at: str
    training_curves: list[dict]
    ranking_metrics: dict | None
    interest_metrics: dict | None
    groups: list[str]
    users: list[InterestRecord]
    drift_scores: list[float]
    recommendations: dict[str, list[RecommendationShown]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``json.dumps(data.to_dict())`` works)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReportData:
        """Rebuild from ``to_dict()`` output; unknown or missing keys raise ``ValueError``."""
        check_keys(cls, raw)  # a typo or a stale file fails loudly, never drops a field
        users = [InterestRecord.from_row(user) for user in raw["users"]]
        shown = {
            user: [RecommendationShown.from_dict(item) for item in items]
            for user, items in raw["recommendations"].items()
        }
        return cls(**{**raw, "users": users, "recommendations": shown})
