"""How the report writes numbers and structured values: one rule for figures, words for the rest.

Every number in a table goes through :func:`figure` with its table's one precision, so a
column never mixes 0.686 with 0.7785; counts read as integers with thousands separators; and
any mapping or list that reaches the page is written out in words (:func:`words`), never as
a Python ``repr`` (``{'test': 2000}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

METRIC_DECIMALS = 4  # ranking and interest metrics, rates, divergences, rating errors
SCORE_DECIMALS = 2  # the model's scores and leave-one-out weights (logits)
COUNT_DECIMALS = 0  # users, events, items

MISSING = "–"  # a figure a side does not have (an older evaluation, a baseline without it)

# Split names as the data writes them -> as a sentence says them.
SPLIT_WORDS = {"test": "test", "valid": "validation", "train": "training"}


def is_number(value: object) -> bool:
    """A finite int or float (``bool`` is not a figure, NaN and infinities have none)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def figure(value: object, decimals: int) -> str:
    """The one way a table writes a number: ``decimals`` fixed places and thousands
    separators (``0.7785``, ``61.5000``, ``2,000``); :data:`MISSING` for anything that is
    not a finite number. A table passes the same ``decimals`` for every cell."""
    if not is_number(value):
        return MISSING
    shown = f"{value:,.{decimals}f}"
    return shown.lstrip("-") if float(shown.replace(",", "")) == 0 else shown  # no "-0.0000"


def count(value: object) -> str:
    """A count for a sentence: ``2,000``."""
    return figure(value, COUNT_DECIMALS)


def plural(number: int, noun: str) -> str:
    """``1 user``, ``2,000 users``."""
    return f"{count(number)} {noun}{'' if number == 1 else 's'}"


def readable(key: object) -> str:
    """A data key as words: ``last_window`` -> ``last window``."""
    return str(key).replace("_", " ")


def join_words(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    parts = [part for part in parts if part]
    if len(parts) < 2:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def users_by_split(users: object) -> str:
    """How many users, in words: ``2,000 users``, or per split, test first, e.g.
    ``2,000 test users and 1,966 validation users``; "" when unknown."""
    if is_number(users):
        return plural(int(users), "user")
    if not isinstance(users, Mapping):
        return words(users) if users not in (None, "") else ""
    order = [split for split in SPLIT_WORDS if split in users] + sorted(
        (str(k) for k in users if k not in SPLIT_WORDS), key=str
    )
    return join_words(
        [
            f"{count(users[split])} {SPLIT_WORDS.get(split, readable(split))} users"
            if is_number(users[split])
            else f"{SPLIT_WORDS.get(split, readable(split))} users: {words(users[split])}"
            for split in order
        ]
    )


def words(value: object) -> str:
    """Any value as plain words, for text that was meant to be a string but may not be
    (a newer or hand-edited file): numbers as short figures, lists as ``a, b and c``,
    mappings as ``key value; key value``. Never a ``repr``."""
    if isinstance(value, str):
        return value
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return count(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if math.isfinite(value) else MISSING
    if isinstance(value, Mapping):
        return "; ".join(f"{readable(key)} {words(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return join_words([words(item) for item in value])
    return str(value)
