"""The model a replica serves, and how it follows a registry's promotions.

A :class:`ServedModel` is everything one model version answers with, swapped as a whole; a
:class:`RegistryFollower` loads a newly promoted version off the request path and hands it
over at the instant the whole fleet switches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from recsys_dist import run_layout, schema
from recsys_dist.config import InterestConfig, ServeConfig
from recsys_dist.data.catalogue import catalogue_dir, items_by_category, read_categories
from recsys_dist.inference.predictor import Recommender
from recsys_dist.interests.forecast import Calibration, InterestAnalyzer
from recsys_dist.registry import Pointer, Registry, Version
from recsys_dist.serving.schemas import InterestsResponse
from recsys_dist.serving.store import History

logger = logging.getLogger(__name__)

_NONE = np.zeros(0, np.int64)


@dataclass(frozen=True)
class ServedModel:
    """Everything one model version serves with, swapped as a whole: a request reads it once,
    so its items, scores, interests, filters and ``model_version`` all come from one version.

    ``members`` maps each catalogue category to the vocabulary indices of its items (sorted,
    the model's items only), computed once at load: a category filter is then a union of
    ready arrays, never a walk over the catalogue's ids per request.
    """

    recommender: Recommender
    analyzer: InterestAnalyzer
    members: dict[str, np.ndarray] | None  # category -> its items' indices; None: no catalogue
    version: str  # the model's own version (the registry's id for a registered one)

    @classmethod
    def load(
        cls,
        model_dir: str,
        calibration_run: str,
        categories: dict[str, list[str]] | None,
        interests: InterestConfig,
    ) -> ServedModel:
        recommender = Recommender(model_dir)
        calibration = Calibration.of_run(calibration_run, interests)
        analyzer = InterestAnalyzer(recommender, categories, interests, calibration)
        members = category_members(recommender, categories) if categories else None
        return cls(recommender, analyzer, members, recommender.model_version)

    @classmethod
    def of_version(
        cls, version: Version, settings: ServeConfig, interests: InterestConfig
    ) -> ServedModel:
        """A registered version with its own calibration and catalogue snapshot."""
        categories = read_categories(settings.items_dir or version.items_dir)
        return cls.load(version.model_dir, version.path, categories, interests)

    def unknown_categories(self, names: Sequence[str]) -> list[str]:
        """The names this model's catalogue lacks (all of them without a catalogue)."""
        return [name for name in names if self.members is None or name not in self.members]

    def allowed(
        self, categories: Sequence[str] | None, allow_items: Sequence[str] | None
    ) -> np.ndarray | None:
        """The item indices a request may be answered with (``None``: any): the items of its
        categories, narrowed to ``allow_items`` when both are given. Costs the size of the
        named categories, so it runs beside the scoring, off the event loop."""
        allow = None if allow_items is None else self.recommender.known_indices(allow_items)
        if categories is None or self.members is None:
            return allow
        named = [self.members.get(name, _NONE) for name in categories]
        union = np.unique(np.concatenate([_NONE, *named]))  # a category unknown here: none
        return union if allow is None else np.intersect1d(union, allow)


def category_members(
    recommender: Recommender, categories: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """Each category's items as sorted vocabulary indices (items the model does not know are
    left out: they cannot be recommended)."""
    members = {}
    for name, items in items_by_category(categories).items():
        members[name] = np.unique(recommender.known_indices(items))
    return members


def load_categories(settings: ServeConfig, run_dir: str) -> dict[str, list[str]] | None:
    """Each item's catalogue categories, from ``serve.items_dir`` or the run's own data (the
    ``items/`` beside the events the run was prepared from); ``None`` when there is none."""
    prepared = run_layout.prepared_dir_of(run_dir)
    return read_categories(settings.items_dir or catalogue_dir(prepared))


def analyse_history(
    analyzer: InterestAnalyzer, user_id: str, history: History
) -> InterestsResponse:
    """One user's interests from their online history (raw ids; unknown items counted)."""
    indices = analyzer.recommender.vocab.lookup(history.item_ids)
    known = indices >= schema.NUM_SPECIAL_TOKENS
    times = np.asarray(history.timestamps, np.int64)[known]
    (found,) = analyzer.analyse([user_id], [indices[known]], [times], [int((~known).sum())])
    return InterestsResponse(
        **{field.name: getattr(found, field.name) for field in fields(found)},
        model_version=analyzer.recommender.model_version,
        groups=list(analyzer.groups.names),
    )


class RegistryFollower:
    """Keeps a replica on the registry's current version.

    :meth:`live` is the version the fleet serves now; :meth:`start` polls the pointer in a
    thread. A newly promoted (or rolled back to) version is loaded off the request path, then
    handed to ``switch`` at the fleet's switch instant (``serve.registry_switch_s`` after the
    promotion, by each replica's clock), so every replica moves at once. A failed check or
    load is logged and retried at the next poll: the replica keeps serving what it has.
    """

    def __init__(
        self,
        registry: Registry,
        settings: ServeConfig,
        interests: InterestConfig,
        switch: Callable[[ServedModel], None],
        serving: Callable[[], str | None],
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.interests = interests
        self._switch = switch
        self._serving = serving  # the version the replica serves now
        self._stop = threading.Event()

    def live(self) -> ServedModel:
        """The current version, or, before its switch instant, the one it replaced (a replica
        that starts mid-switch must not run ahead of the others)."""
        pointer = self.registry.pointer()
        if pointer is None:
            raise RuntimeError(f"{self.registry.root}: no current version to serve")
        live = pointer.version
        if pointer.previous and time.time() < self._switch_instant(pointer):
            live = pointer.previous
        return self._load(live)

    def start(self) -> None:
        threading.Thread(target=self._follow, name="registry-follower", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.registry_poll_s):
            try:
                self._catch_up()
            except Exception:  # noqa: BLE001 — keep serving; try again next poll
                logger.exception(
                    "following %s failed; still serving %s", self.registry.root, self._serving()
                )

    def _catch_up(self) -> None:
        pointer = self.registry.pointer()
        if pointer is None or pointer.version == self._serving():
            return
        staged = self._load(pointer.version)
        wait = self._switch_instant(pointer) - time.time()
        if wait > 0 and self._stop.wait(wait):
            return
        if self.registry.pointer() != pointer:  # moved again while waiting: the next poll decides
            return
        if self.settings.registry_switch_s and wait < 0:
            logger.warning(
                "switched to %s %.1f s after the fleet's instant (loading took too long: "
                "raise serve.registry_switch_s)",
                pointer.version,
                -wait,
            )
        self._switch(staged)

    def _load(self, version: str) -> ServedModel:
        return ServedModel.of_version(self.registry.get(version), self.settings, self.interests)

    def _switch_instant(self, pointer: Pointer) -> float:
        return pointer.updated_at + self.settings.registry_switch_s
