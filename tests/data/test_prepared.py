"""Reading a prepared dataset: the users a fine-tuning turn trains on (the rest of reading is
exercised through ``prepare`` in test_prepare.py)."""

from __future__ import annotations

import pyarrow as pa

from recsys_dist import schema
from recsys_dist.data.prepared import recent_users


def users_table(last_times: list[int]) -> pa.Table:
    """One user per entry, with two events, the later at the given time."""
    return pa.table(
        {
            schema.USER_ID: [f"u{i}" for i in range(len(last_times))],
            schema.ITEMS: [[1, 2] for _ in last_times],
            schema.TIMESTAMPS: [[t - 10, t] for t in last_times],
        }
    )


def kept(users: pa.Table) -> set[str]:
    return set(users.column(schema.USER_ID).to_pylist())


def test_every_user_active_since_the_cut_is_kept_and_no_one_else_without_replay():
    users = users_table([100, 200, 300, 400])
    assert kept(recent_users(users, since=250, replay=0.0)) == {"u2", "u3"}
    assert kept(recent_users(users, since=400, replay=0.0)) == set()  # "after", not "at"
    assert kept(recent_users(users, since=250, replay=1.0)) == {"u0", "u1", "u2", "u3"}


def test_the_replayed_share_of_inactive_users_is_the_one_asked_for():
    users = users_table([100] * 20_000)
    share = recent_users(users, since=500, replay=0.3).num_rows / users.num_rows
    assert 0.28 < share < 0.32


def test_the_same_users_are_replayed_in_every_block_and_others_next_turn():
    """A choice per user, not per block: workers and reruns agree; a later cut replays others."""
    users = users_table([100] * 2_000)
    whole = kept(recent_users(users, since=500, replay=0.25))
    halves = kept(recent_users(users.slice(0, 700), since=500, replay=0.25)) | kept(
        recent_users(users.slice(700), since=500, replay=0.25)
    )
    assert whole == halves
    later = kept(recent_users(users, since=90_000, replay=0.25))
    assert len(whole & later) < 0.5 * len(whole)


def test_a_block_of_no_users_stays_empty():
    assert recent_users(users_table([]), since=5, replay=0.5).num_rows == 0
