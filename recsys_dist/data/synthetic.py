"""Synthetic behaviour logs in which users' interests drift over time.

Public logs are small or licence-bound; a generator lets every stage run at any scale, and
its ground truth (who drifts, which item follows which) lets tests check that a time-aware
model learns what is there. Three signals are planted:

* **Drift**: a third of users keep one category preference, a third move gradually from one
  set of categories to another, a third switch abruptly at a random point. Where interests go
  is random unless ``drift_paths`` > 0: then each new category follows, with that
  probability, one of the *common paths* out of the old one (every category has
  :data:`PATH_TARGETS` typical successors, the same for all users: kids' films lead to teen
  films more often than to opera), which is what makes a shift forecastable.
* **Order**: within a category every item has a fixed successor that follows it with
  probability :data:`SUCCESSOR_PROB`, so order carries information beyond the category.
* **Time**: sessions, with seconds-to-minutes gaps inside and hours-to-days gaps between.
  With ``break_days`` > 0 every user also takes one long break (weeks), and an abrupt
  user's new interest starts when they come back: a shift a model can only anticipate from
  the time gap, as with a returning customer whose life has moved on. Stable and gradual
  users take the break too, so a break says a shift is likely, not certain.

Users are generated in shards by Ray tasks, each seeded by ``(seed, shard)`` and writing its
own Parquet part, so output is identical for a seed whatever the cluster, and the driver only
sums counts: memory stays bounded at 10^8 events. The output directory may be local or
``s3://`` (shard tasks write through :mod:`recsys_dist.storage`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.data.importers import PartWriter, prepare_output_dir
from recsys_dist.errors import UserInputError

logger = logging.getLogger(__name__)

# The generator's ground truth, beside the canonical dataset; read by tests and analyses
# (change-point precision/recall, the share of recommendations in a user's new interest).
USERS_DIR = "users"
DRIFT_KIND = "drift_kind"  # "stable", "gradual" or "abrupt"
SHIFT_START = "shift_start"  # first event of the new interest (abrupt) or of the timeline
SHIFT_END = "shift_end"  # = shift_start (abrupt) or the last event's time (gradual)
SHIFT_EVENT = "shift_event"  # abrupt: index of the first event drawn from the new interest
BREAK_EVENT = "break_event"  # break_days > 0: index of the first event after the long break
FROM_CATEGORIES = "from_categories"  # categories preferred before the shift (all users)
TO_CATEGORIES = "to_categories"  # categories preferred after it (null for stable users)
OUTPUT_DIRS = (schema.EVENTS_DIR, schema.ITEMS_DIR, USERS_DIR)  # what a generated dataset holds
USER_SCHEMA = pa.schema(
    [
        pa.field(schema.USER_ID, pa.string(), nullable=False),
        pa.field(DRIFT_KIND, pa.string()),
        pa.field(SHIFT_START, pa.int64()),
        pa.field(SHIFT_END, pa.int64()),
        pa.field(SHIFT_EVENT, pa.int32()),
        pa.field(BREAK_EVENT, pa.int32()),
        pa.field(FROM_CATEGORIES, pa.list_(pa.string())),
        pa.field(TO_CATEGORIES, pa.list_(pa.string())),
    ]
)
DRIFT_KINDS = ("stable", "gradual", "abrupt")
STABLE, GRADUAL, ABRUPT = range(3)

SUCCESSOR_PROB = 0.5  # chance the next event is the previous item's successor
NOISE_PROB = 0.15  # chance an event's category ignores the preference (uniform instead)
TWO_CATEGORY_PROB = 0.5  # chance a preference set holds two categories, not one
FIRST_CATEGORY_SHARE = 0.65  # share of the first category in a two-category set
PATH_TARGETS = 2  # common next interests of each category (drift_paths > 0)
SECONDARY_PROB = 0.3  # chance an item also carries a second category label
ZIPF_EXPONENT = 1.1  # popularity of the r-th item of a category ~ 1 / r^ZIPF_EXPONENT
EVENT_TYPES = ("view", "click", "purchase")
EVENT_TYPE_CDF = np.cumsum([0.7, 0.2, 0.1])[:-1]  # purchases carry a rating, others none
SESSION_START_PROB = 0.2  # chance an event opens a new session
WITHIN_SESSION_MEAN_S = 90.0
BETWEEN_SESSIONS_S = (1_800.0, 5 * 86_400.0)  # log-uniform gap between sessions
FIRST_DAY = 1_672_531_200  # 2023-01-01 UTC; users start within the following year
YEAR_S = 365 * 86_400
BLOCK_EVENTS = 262_144  # events generated (and written as one row group) at a time


@dataclass
class GenerateSummary:
    """What :func:`generate_dataset` wrote."""

    output: str
    users: int
    items: int
    categories: int
    events: int
    shards: int
    seed: int


@dataclass(frozen=True)
class Catalogue:
    """Items, their categories, popularity and successor relation (the planted structure)."""

    primary: np.ndarray  # [items] int64: each item's category
    secondary: np.ndarray  # [items] int64: a second category label, -1 if none
    cat_start: np.ndarray  # [categories]: first slot of each category in the arrays below
    cat_size: np.ndarray  # [categories]: items per category
    sample_keys: np.ndarray  # [items] category + cumulative popularity share, ascending
    sample_items: np.ndarray  # [items] the item at each key
    cycle_items: np.ndarray  # [items] items grouped by category, in successor order
    cycle_pos: np.ndarray  # [items] each item's slot within its category's cycle
    paths: np.ndarray  # [categories, PATH_TARGETS]: where an interest in each category tends to go

    @property
    def successor(self) -> np.ndarray:
        """[items]: the item that tends to follow each item."""
        return self.follow(np.arange(len(self.primary)), 1)

    def follow(self, items: np.ndarray, steps: np.ndarray | int) -> np.ndarray:
        """Apply the successor relation ``steps`` times (it cycles within a category)."""
        cats = self.primary[items]
        slots = (self.cycle_pos[items] + steps) % self.cat_size[cats]
        return self.cycle_items[self.cat_start[cats] + slots]

    def sample(self, cats: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Draw one item of each category in ``cats`` by popularity, from uniforms in [0, 1)."""
        slots = np.searchsorted(self.sample_keys, cats + uniforms, side="right")
        slots = np.minimum(slots, self.cat_start[cats] + self.cat_size[cats] - 1)  # rounding
        return self.sample_items[slots]


def build_catalogue(items: int, categories: int, seed: int) -> Catalogue:
    """The item side of the generator, a pure function of its arguments."""
    rng = np.random.default_rng([seed, 0])
    primary = rng.permutation(np.arange(items) % categories)  # every category gets items
    other = (primary + rng.integers(1, max(categories, 2), items)) % categories
    secondary = np.where(rng.random(items) < SECONDARY_PROB, other, -1)
    cat_size = np.bincount(primary, minlength=categories)
    cat_start = np.concatenate([[0], np.cumsum(cat_size)[:-1]])
    by_popularity = np.lexsort((rng.random(items), primary))  # grouped, random within
    rank = np.arange(items) - np.repeat(cat_start, cat_size)  # 0 = most popular
    weights = np.cumsum(1.0 / (rank + 1.0) ** ZIPF_EXPONENT)
    before = np.repeat(np.concatenate([[0.0], weights[cat_start[1:] - 1]]), cat_size)
    total = np.repeat(weights[cat_start + cat_size - 1], cat_size) - before
    share = (weights - before) / total
    share[cat_start + cat_size - 1] = 1.0
    cycle = np.lexsort((rng.random(items), primary))
    cycle_pos = np.empty(items, dtype=np.int64)
    cycle_pos[cycle] = rank
    paths_rng = np.random.default_rng([seed, 2])  # its own stream: items do not depend on it
    paths = np.stack(
        [
            (c + 1 + paths_rng.permutation(categories - 1)[:PATH_TARGETS]) % categories
            for c in range(categories)
        ]
    )
    return Catalogue(
        primary=primary,
        secondary=secondary,
        cat_start=cat_start,
        cat_size=cat_size,
        sample_keys=primary[by_popularity] + share,
        sample_items=by_popularity,
        cycle_items=cycle,
        cycle_pos=cycle_pos,
        paths=paths,
    )


def generate_dataset(
    output_dir: str,
    users: int = 1000,
    items: int = 500,
    categories: int = 10,
    seed: int = 0,
    events_per_user: tuple[int, int] = (20, 80),
    users_per_shard: int = 50_000,
    start_days: int = 365,
    drift_paths: float = 0.0,
    break_days: float = 0.0,
    *,
    overwrite: bool = False,
) -> GenerateSummary:
    """Write a drifting synthetic log as a canonical dataset (plus ``users/`` ground truth).

    Starts a local Ray instance if none is running. Shards run as Ray tasks, at most two per
    CPU in flight, so the object store and the driver stay small whatever ``users`` is.

    Args:
        output_dir: receives ``events/``, ``items/`` and ``users/`` (the ground truth:
            :data:`USER_SCHEMA`, who shifted, when, from which categories to which).
        users, items, categories: sizes; ``items >= categories >= 2``.
        seed: output is a pure function of all arguments.
        events_per_user: inclusive range of events per user, drawn uniformly.
        start_days: users start uniformly within this many days of 2023-01-01 (a short span
            puts most users' timelines across a global time split's cuts).
        drift_paths: chance that each category a drifting user moves to is one of the common
            paths out of the one it replaces (0: anywhere, as in earlier versions; the same
            seed then gives the same log as before).
        break_days: every user takes one break of ``break_days`` to twice that, at the point
            where an abrupt user's new interest starts (0: none; the same seed then gives the
            same events as before).
        users_per_shard: users per Ray task and per ``events/part-NNNNN.parquet``.
        overwrite: replace the parts of an earlier run instead of refusing.
    """
    check_arguments(
        users, items, categories, events_per_user, users_per_shard, drift_paths, break_days
    )
    root = prepare_output_dir(output_dir, OUTPUT_DIRS, overwrite)
    catalogue = build_catalogue(items, categories, seed)
    _write_items(storage.join(root, schema.ITEMS_DIR), catalogue)
    starts = range(0, users, users_per_shard)
    shards = [(i, lo, min(lo + users_per_shard, users)) for i, lo in enumerate(starts)]
    spec = _UserSpec(events_per_user, start_days * 86_400, drift_paths, break_days * 86_400)
    events = _run_shards(storage.absolute(root), shards, catalogue, seed, spec)
    summary = GenerateSummary(str(output_dir), users, items, categories, events, len(shards), seed)
    logger.debug("generated %s", summary)
    return summary


def check_arguments(
    users: int,
    items: int,
    categories: int,
    events_per_user: tuple[int, int] = (20, 80),
    users_per_shard: int = 50_000,
    drift_paths: float = 0.0,
    break_days: float = 0.0,
) -> None:
    """Raise :class:`UserInputError` naming the first bad argument of :func:`generate_dataset`
    (the CLI calls it before starting Ray)."""
    lo, hi = events_per_user
    if users < 1:
        raise UserInputError(f"users (--num-users) must be >= 1, got {users}")
    if users_per_shard < 1:
        raise UserInputError(f"users_per_shard must be >= 1, got {users_per_shard}")
    if categories < 2:
        raise UserInputError(f"categories (--num-categories) must be >= 2, got {categories}")
    if items < categories:
        raise UserInputError(
            f"items (--num-items) must be >= categories (--num-categories), "
            f"got {items=} {categories=}"
        )
    if not 1 <= lo <= hi:
        raise UserInputError(f"events_per_user={events_per_user} must satisfy 1 <= low <= high")
    if not 0.0 <= drift_paths <= 1.0:
        raise UserInputError(f"drift_paths (--drift-paths) must be in [0, 1], got {drift_paths}")
    if not break_days >= 0:  # also refuses NaN
        raise UserInputError(f"break_days (--break-days) must be >= 0, got {break_days}")


def _write_items(directory: str, catalogue: Catalogue) -> None:
    n = len(catalogue.primary)
    with PartWriter(directory, schema.ITEM_SCHEMA) as writer:
        for lo in range(0, n, 1_000_000):
            ids = range(lo, min(lo + 1_000_000, n))
            first, second = (
                catalogue.primary[ids.start : ids.stop],
                catalogue.secondary[ids.start : ids.stop],
            )
            cats = [
                [f"cat-{a}"] if b < 0 else [f"cat-{a}", f"cat-{b}"]
                for a, b in zip(first, second, strict=True)
            ]
            columns = {
                schema.ITEM_ID: [f"i{k}" for k in ids],
                schema.TITLE: [f"item-{k} (cat-{a})" for k, a in zip(ids, first, strict=True)],
                schema.CATEGORIES: cats,
            }
            writer.write(pa.table(columns, schema=schema.ITEM_SCHEMA))


def _run_shards(
    root: str,
    shards: list[tuple[int, int, int]],
    catalogue: Catalogue,
    seed: int,
    spec: _UserSpec,
) -> int:
    """Run shard tasks with bounded concurrency; returns the number of events written."""
    import ray

    from recsys_dist.data.parallel import map_tasks

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    catalogue_ref = ray.put(catalogue)
    calls = [(root, *shard, catalogue_ref, seed, spec) for shard in shards]
    return sum(map_tasks(_generate_shard, calls, desc="generate", unit="shard"))


@dataclass(frozen=True)
class _UserSpec:
    """How users are drawn (the same for every shard)."""

    events_per_user: tuple[int, int]  # inclusive range
    start_spread_s: int  # users start uniformly within this many seconds of FIRST_DAY
    drift_paths: float  # chance a new category follows a common path out of the old one
    break_s: float = 0.0  # shortest long break (seconds); 0: no breaks


@dataclass
class _Users:
    """Per-user draws of one shard (every array has one entry per user)."""

    ids: np.ndarray  # global user numbers
    length: np.ndarray  # events
    kind: np.ndarray  # STABLE, GRADUAL or ABRUPT
    a: np.ndarray  # [users, 2] categories preferred first
    b: np.ndarray  # [users, 2] categories preferred after the drift
    a_share: np.ndarray  # share of a[:, 0] within set a
    b_share: np.ndarray
    switch: np.ndarray  # abrupt users: fraction of the timeline where a gives way to b
    start: np.ndarray  # first event time
    pause: np.ndarray  # seconds of the long break before the switch point (0: none)

    def take(self, lo: int, hi: int) -> _Users:
        return _Users(*(getattr(self, f)[lo:hi] for f in self.__dataclass_fields__))


def _draw_users(
    rng: np.random.Generator, lo: int, hi: int, paths: np.ndarray, spec: _UserSpec
) -> _Users:
    n, categories = hi - lo, len(paths)
    length = rng.integers(spec.events_per_user[0], spec.events_per_user[1] + 1, n)
    kind = rng.integers(0, len(DRIFT_KINDS), n)
    picks = _distinct_categories(rng, n, categories, min(4, categories))
    a = picks[:, [0, 2 % picks.shape[1]]]  # with < 4 categories each set holds one category
    b = picks[:, [1, 3 % picks.shape[1]]]
    if spec.drift_paths > 0:  # no extra draws otherwise: a seed's log stays what it was
        b = _follow_paths(rng, a, b, paths, spec.drift_paths)
    share = np.where(rng.random((n, 2)) < TWO_CATEGORY_PROB, FIRST_CATEGORY_SHARE, 1.0)
    switch = rng.uniform(0.3, 0.7, n)
    start = FIRST_DAY + rng.integers(0, spec.start_spread_s, n)
    pause = np.zeros(n)
    if spec.break_s > 0:  # no extra draws otherwise, as for drift paths
        pause = spec.break_s * rng.uniform(1.0, 2.0, n)
    ids = np.arange(lo, hi)
    return _Users(ids, length, kind, a, b, share[:, 0], share[:, 1], switch, start, pause)


def _follow_paths(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, paths: np.ndarray, prob: float
) -> np.ndarray:
    """``b`` with each category replaced, with probability ``prob``, by a common path out of
    the matching category of ``a``, where that keeps a user's categories distinct."""
    out = b.copy()
    rows = np.arange(len(a))
    for j in range(b.shape[1]):
        target = paths[a[:, j], rng.integers(0, paths.shape[1], len(a))]
        clash = (target[:, None] == a).any(axis=1) | (target == out[rows, 1 - j])
        out[:, j] = np.where((rng.random(len(a)) < prob) & ~clash, target, out[:, j])
    return out


def _distinct_categories(rng: np.random.Generator, n: int, categories: int, k: int) -> np.ndarray:
    """[n, k] categories, distinct within each row (redraw rows with repeats)."""
    picks = rng.integers(0, categories, (n, k))
    while True:
        ordered = np.sort(picks, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(bad):
            return picks
        picks[bad] = rng.integers(0, categories, (len(bad), k))


def _generate_shard(
    root: str,
    shard: int,
    lo: int,
    hi: int,
    catalogue: Catalogue,
    seed: int,
    spec: _UserSpec,
) -> int:
    """Generate users ``[lo, hi)`` into ``events/part-{shard}``; returns events written."""
    rng = np.random.default_rng([seed, 1, shard])
    users = _draw_users(rng, lo, hi, catalogue.paths, spec)
    truth = []  # ground truth per block of users
    item_names = pa.array([f"i{k}" for k in range(len(catalogue.primary))])
    events_path = storage.join(root, schema.EVENTS_DIR, f"part-{shard:05d}.parquet")
    ends = np.cumsum(users.length)
    written = 0
    with (
        storage.open_output(events_path) as sink,
        pq.ParquetWriter(sink, schema.EVENT_SCHEMA) as writer,
    ):
        first = 0
        while first < len(users.ids):
            last = max(first + 1, int(np.searchsorted(ends, written + BLOCK_EVENTS, "right")))
            block = users.take(first, last)
            table = _events_table(rng, catalogue, block, item_names)
            writer.write_table(table, row_group_size=BLOCK_EVENTS)
            truth.append(_ground_truth(block, table.column(schema.TIMESTAMP).to_numpy()))
            written, first = written + table.num_rows, last
    with storage.open_output(storage.join(root, USERS_DIR, f"part-{shard:05d}.parquet")) as sink:
        pq.write_table(pa.concat_tables(truth), sink)
    return written


def _ground_truth(users: _Users, times: np.ndarray) -> pa.Table:
    """Who shifted, when, and from which categories to which (``times``: the users' events in
    order, as :func:`_events_table` wrote them)."""
    first = np.cumsum(users.length) - users.length  # [U] each user's first event
    last = first + users.length - 1
    switch_pos = _switch_position(users)
    took_break = (users.pause > 0) & (switch_pos > 0)
    abrupt, gradual = users.kind == ABRUPT, users.kind == GRADUAL
    start = np.where(abrupt, times[first + switch_pos], times[first])
    end = np.where(abrupt, start, times[last])
    stable = ~(abrupt | gradual)
    columns = {
        schema.USER_ID: [f"u{k}" for k in users.ids],
        DRIFT_KIND: pa.array(DRIFT_KINDS).take(pa.array(users.kind)),
        SHIFT_START: pa.array(start, mask=stable),
        SHIFT_END: pa.array(end, mask=stable),
        SHIFT_EVENT: pa.array(switch_pos.astype(np.int32), mask=~abrupt),
        BREAK_EVENT: pa.array(switch_pos.astype(np.int32), mask=~took_break),
        FROM_CATEGORIES: _category_sets(users.a, users.a_share),
        TO_CATEGORIES: pa.array(
            _category_sets(users.b, users.b_share).to_pylist(), pa.list_(pa.string()), mask=stable
        ),
    }
    return pa.table(columns, schema=USER_SCHEMA)


def _switch_position(users: _Users) -> np.ndarray:
    """[U] index of each user's switch point: the first event whose timeline fraction reaches
    ``switch`` (where an abrupt user's new interest starts and the long break ends)."""
    return np.ceil(users.switch * (users.length - 1)).astype(np.int64)


def _category_sets(sets: np.ndarray, first_share: np.ndarray) -> pa.Array:
    """Category names of each user's preference set (one name when the first takes it all)."""
    return pa.array(
        [
            [f"cat-{a}"] if share >= 1.0 or a == b else [f"cat-{a}", f"cat-{b}"]
            for (a, b), share in zip(sets.tolist(), first_share.tolist(), strict=True)
        ],
        pa.list_(pa.string()),
    )


def _events_table(
    rng: np.random.Generator, catalogue: Catalogue, users: _Users, item_names: pa.Array
) -> pa.Table:
    """All events of ``users``, vectorised over the block (no per-event Python)."""
    total = int(users.length.sum())
    owner = np.repeat(np.arange(len(users.ids)), users.length)  # [E] user of each event
    first = np.cumsum(users.length) - users.length  # [U] index of each user's first event
    pos = np.arange(total) - first[owner]  # [E] position within the user
    frac = pos / np.maximum(users.length[owner] - 1, 1)
    cats = _event_categories(rng, users, owner, frac, len(catalogue.cat_size))
    fresh = catalogue.sample(cats, rng.random(total))
    follows = (rng.random(total) < SUCCESSOR_PROB) & (pos > 0)
    anchor = np.maximum.accumulate(np.where(follows, 0, np.arange(total)))  # last fresh pick
    items = catalogue.follow(fresh[anchor], np.arange(total) - anchor)
    times = _event_times(rng, users, owner, pos, first)
    kinds = np.searchsorted(EVENT_TYPE_CDF, rng.random(total), side="right")
    rating = rng.choice(np.arange(1, 6, dtype=np.float32), total, p=[0.05, 0.1, 0.2, 0.35, 0.3])
    user_names = pa.array([f"u{k}" for k in users.ids])
    columns = [
        user_names.take(pa.array(owner)),
        item_names.take(pa.array(items)),
        pa.array(times),
        pa.array(EVENT_TYPES).take(pa.array(kinds)),
        pa.array(rating, mask=kinds != len(EVENT_TYPES) - 1),
    ]
    return pa.Table.from_arrays(columns, schema=schema.EVENT_SCHEMA)


def _event_categories(
    rng: np.random.Generator, users: _Users, owner: np.ndarray, frac: np.ndarray, categories: int
) -> np.ndarray:
    """Each event's category: set a before the drift, set b after it, plus uniform noise."""
    total = len(owner)
    kind = users.kind[owner]
    after = np.where(kind == GRADUAL, frac, (kind == ABRUPT) & (frac >= users.switch[owner]))
    use_b = rng.random(total) < after
    sets = np.where(use_b[:, None], users.b[owner], users.a[owner])  # [E, 2]
    share = np.where(use_b, users.b_share[owner], users.a_share[owner])
    cats = np.where(rng.random(total) < share, sets[:, 0], sets[:, 1])
    noise = rng.random(total) < NOISE_PROB
    return np.where(noise, rng.integers(0, categories, total), cats)


def _event_times(
    rng: np.random.Generator, users: _Users, owner: np.ndarray, pos: np.ndarray, first: np.ndarray
) -> np.ndarray:
    """Seconds since the epoch: short gaps inside sessions, long ones between."""
    total = len(owner)
    new_session = rng.random(total) < SESSION_START_PROB
    within = 1.0 + rng.exponential(WITHIN_SESSION_MEAN_S, total)
    between = np.exp(rng.uniform(*np.log(BETWEEN_SESSIONS_S), total))
    gaps = np.ceil(np.where(new_session, between, within)).astype(np.int64)
    returning = (pos == _switch_position(users)[owner]) & (users.pause[owner] > 0)
    gaps[returning] = np.ceil(users.pause[owner][returning]).astype(np.int64)
    gaps[pos == 0] = 0
    elapsed = np.cumsum(gaps)
    return users.start[owner] + elapsed - elapsed[first][owner]
