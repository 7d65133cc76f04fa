"""What the report draws, as plain dataclasses that survive a JSON round trip.

The collector (reading a run directory) and the renderer meet only here, so either can be
tested alone: a test or the CLI can write a ``ReportData`` to JSON and render it later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class UserInterests:
    """One user's interest trajectory: group shares per window, change points, forecast.

    Attributes:
        user_id: the user's external id (untrusted text; the renderer escapes it).
        groups: interest group names (catalogue categories or ``"cluster-N"``), length G.
        window_starts: [W] first event time (unix seconds) of each window of the trajectory.
        window_counts: [W] events in each window.
        profiles: [W][G] share of each group per window (rows sum to 1).
        change_points: each ``{"timestamp": int, "score": float, "rose": [[group, before,
            after], ...], "fell": [[group, before, after], ...]}``.
        forecast: [G] predicted distribution of the next window (sums to 1), or None.
        drift: Jensen-Shannon divergence (base 2, in [0, 1]) of the recent vs long-term profile.
    """

    user_id: str
    groups: list[str]
    window_starts: list[int]
    window_counts: list[int]
    profiles: list[list[float]]
    change_points: list[dict]
    forecast: list[float] | None
    drift: float


@dataclass
class ReportData:
    """Everything one report page shows.

    Attributes:
        title: page title, e.g. the run directory name.
        model_version: version of the model the numbers belong to.
        generated_at: ISO timestamp of when the data was collected.
        training_curves: rows of ``RUN/metrics.jsonl`` (keys vary between runs).
        ranking_metrics: model metrics with ``protocol``/``split``/``users`` and a
            ``baseline_popularity`` dict of the same metrics, or None.
        interest_metrics: ``{"protocol", "users", "methods": {name: {"js", "top_accuracy"}}}``,
            or None.
        users: a sample of users to draw.
        drift_scores: drift of every user (for the histogram).
    """

    title: str
    model_version: str
    generated_at: str
    training_curves: list[dict]
    ranking_metrics: dict | None
    interest_metrics: dict | None
    users: list[UserInterests]
    drift_scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``json.dumps(data.to_dict())`` works)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReportData:
        """Rebuild from ``to_dict()`` output; unknown or missing keys raise ``ValueError``."""
        _check_keys(cls, raw)
        for user in raw["users"]:
            _check_keys(UserInterests, user)
        users = [UserInterests(**user) for user in raw["users"]]
        return cls(**{**raw, "users": users})


def _check_keys(cls: type, raw: dict[str, Any]) -> None:
    """Fail loudly on a typo or a stale file instead of silently dropping a field."""
    expected = {field.name for field in fields(cls)}
    unknown, missing = set(raw) - expected, expected - set(raw)
    if unknown or missing:
        raise ValueError(
            f"{cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )
