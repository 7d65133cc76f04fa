"""The range every numeric setting may take, declared beside its default.

A leaf of its own so that :mod:`recsys_dist.config` holds the settings and their loading, and
this the one rule for bounds (:func:`bounded` to declare one, :func:`ranges` to read them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

RANGE = "range"  # the metadata key of a numeric field's Range


@dataclass(frozen=True)
class Range:
    """Where a numeric setting may lie: ``[low, high]``, either end open, plus ``also``
    values with a meaning of their own (``interests.blend=-1``: fit it)."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return (above and below) or value in self.also

    def __str__(self) -> str:
        opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return " or ".join([f"{opening}{self.low}, {self.high}{closing}", *map(str, self.also)])


def bounded(default: Any, low: float, high: float, **shape: Any) -> Any:
    """A numeric field: its default and its :class:`Range` (``low_open``, ``high_open``,
    ``also``), declared together so the two cannot drift apart.

    Why: every number a config holds is checked when its section is built, so a value that
    switches a protection off or spins a loop (``serve.max_body_bytes=0``,
    ``serve.api_keys_reload_s=0``) or an absurd magnitude fails at load, not in production.
    """
    return field(default=default, metadata={RANGE: Range(low, high, **shape)})


def ranges(section: type) -> dict[str, Range]:
    """The range of each numeric field of a section class, by field name."""
    return {f.name: f.metadata[RANGE] for f in dataclasses.fields(section) if RANGE in f.metadata}
