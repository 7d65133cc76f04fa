"""``import``, ``generate`` and ``prepare``: a log in, a prepared sequence dataset out."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsys_dist.cli import common
from recsys_dist.cli.command import Command, done
from recsys_dist.config import BAD_ROW_POLICIES, SPLIT_METHODS
from recsys_dist.data.importers import FORMATS


def n(value: Any) -> str:
    """A count with thousands separators (other values as they are)."""
    return f"{value:,}" if isinstance(value, int) else str(value)


# --- import ---------------------------------------------------------------------------------
def _import_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--format", required=True, choices=FORMATS, help="the log's format")
    sub.add_argument("input", help="the log: a file or directory (local or s3://)")
    sub.add_argument("--output", required=True, help="the canonical dataset directory")
    sub.add_argument(
        "--map",
        nargs="*",
        default=[],
        metavar="CANONICAL=SOURCE",
        help="column mapping, e.g. user_id=uid item_id=movie timestamp=ts "
        "(default: the columns already have the canonical names)",
    )
    sub.add_argument("--delimiter", default=",", help="csv: the field separator")
    sub.add_argument(
        "--timestamp-unit",
        default="s",
        choices=["s", "ms", "us", "ns"],
        help="the unit of the log's timestamps",
    )
    common.add(sub, "--overwrite")


def _run_import(args: argparse.Namespace):
    from recsys_dist.data.importers import import_dataset

    for pair in args.map:
        common.require("=" in pair, f"--map {pair!r}: expected CANONICAL=SOURCE, e.g. user_id=uid")
    mapping = dict(pair.split("=", 1) for pair in args.map)
    return import_dataset(
        args.format,
        args.input,
        args.output,
        mapping,
        args.delimiter,
        args.timestamp_unit,
        overwrite=args.overwrite,
    )


def _import_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return done(
        f"imported {n(r['events'])} events and {n(r['items'])} items ({r['format']}) "
        f"in {seconds:.1f} s",
        output=f"{r['output']} ({r['files_written']} event file(s))",
        then=f"prepare --data {r['output']} --output PREPARED",
    )


# --- generate -------------------------------------------------------------------------------
def _generate_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--output", required=True, help="the dataset directory to write")
    sub.add_argument("--num-users", type=int, default=1000, help="users to generate")
    sub.add_argument("--num-items", type=int, default=500, help="items in the catalogue")
    sub.add_argument("--num-categories", type=int, default=10, help="item categories")
    sub.add_argument("--seed", type=int, default=0, help="the random seed")
    sub.add_argument(
        "--drift-paths",
        type=float,
        default=0.0,
        help="chance a drifting user's new category is a common path out of the old one",
    )
    sub.add_argument(
        "--break-days",
        type=float,
        default=0.0,
        help="every user takes one break this long (to twice it); abrupt shifts start after it",
    )
    common.add(sub, "--overwrite")


def _run_generate(args: argparse.Namespace):
    from recsys_dist.data import synthetic
    from recsys_dist.data.importers import check_output_dir

    counts = {"users": args.num_users, "items": args.num_items, "categories": args.num_categories}
    shape = {"drift_paths": args.drift_paths, "break_days": args.break_days}
    synthetic.check_arguments(*counts.values(), **shape)
    check_output_dir(args.output, synthetic.OUTPUT_DIRS, args.overwrite)
    common.init_ray(args.address)
    return synthetic.generate_dataset(
        args.output, **counts, seed=args.seed, **shape, overwrite=args.overwrite
    )


def _generate_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return done(
        f"generated {n(r['events'])} events: {n(r['users'])} users, {n(r['items'])} items "
        f"in {r['categories']} categories (seed {r['seed']}) in {seconds:.1f} s",
        output=r["output"],
        then=f"prepare --data {r['output']} --output PREPARED",
    )


# --- prepare --------------------------------------------------------------------------------
# Flags that set a data.* setting: flag -> (the setting, its type or choices, what it does).
PREPARE_SETTINGS = {
    "--max-len": ("data.max_len", {"type": int}, "events the model reads per user"),
    "--split": (
        "data.split",
        {"choices": SPLIT_METHODS},
        "how held-out events are chosen: each user's last (loo) or after global time cuts (time)",
    ),
    "--holdout-events": (
        "data.holdout_events",
        {"type": int},
        "loo: events held out per user for test and for valid",
    ),
    "--on-bad-rows": (
        "data.on_bad_rows",
        {"choices": BAD_ROW_POLICIES},
        "stop at the first bad row, or skip and count them",
    ),
    "--min-user-events": (
        "data.min_user_events",
        {"type": int},
        "users with fewer events are left out",
    ),
}


def _prepare_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data", required=True, help="the raw events (an import's output)")
    sub.add_argument("--output", required=True, help="the prepared dataset's directory")
    for flag, (key, kind, text) in PREPARE_SETTINGS.items():
        sub.add_argument(flag, **kind, help=f"{text} {common.default_from_config(key)}")
    sub.add_argument(
        "--append",
        action="store_true",
        help="add --data (new log partitions) to the dataset in --output, keeping its settings",
    )
    common.add_config_args(sub)


def _run_prepare(args: argparse.Namespace):
    from recsys_dist.data.events import event_files
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.prepared import load_manifest

    event_files(args.data)  # the input is there before Ray starts
    stored: list[str] = []
    if args.append:  # an appended partition keeps the dataset's settings unless told otherwise
        kept = load_manifest(args.output)["config"]
        stored = [f"data.{k}={json.dumps(v)}" for k, v in kept.items() if k != "on_bad_rows"]
    flags = {
        key: getattr(args, flag[2:].replace("-", "_"))
        for flag, (key, *_) in PREPARE_SETTINGS.items()
    }
    config = common.config(args, stored, **flags)
    common.init_ray(args.address)
    return prepare_dataset(args.data, args.output, config.data, append=args.append)


def _prepare_summary(r: dict, args: Any, seconds: float) -> list[str]:
    taken = r.get("taken", {})
    if taken.get("files") == 0:
        return [
            f"nothing new: all {taken['already_taken']} file(s) in {args.data} were taken "
            f"before; {args.output} is unchanged"
        ]
    counts = r["counts"]
    rows = ", ".join(f"{s} {n(counts.get(f'{s}_rows', 0))}" for s in ("train", "valid", "test"))
    unreadable = counts.get("files_skipped", 0)
    hint, preset = _preset(counts, r["max_len"])
    return done(
        f"prepared {n(counts['users'])} users and {n(r['num_items'])} items from "
        f"{n(counts['events'])} events ({r['files']} file(s)) in {seconds:.1f} s",
        f"sequences: {rows} ({r['split']} split, max_len {r['max_len']})"
        + (f"; took {taken['files']} new file(s)" if taken.get("already_taken") else ""),
        f"skipped: {n(counts.get('bad_rows_skipped', 0))} bad row(s)"
        + (f", {unreadable} unreadable file(s)" if unreadable else "")
        + f", {n(counts.get('duplicates_dropped', 0))} "
        f"duplicate(s), {n(counts.get('users_below_min_events', 0))} user(s) below "
        "min_user_events",
        *hint,
        output=args.output,
        then=f"train {preset}--data {args.output} --output RUN",
    )


def _preset(counts: dict, max_len: int) -> tuple[list[str], str]:
    """The preset that suits the data's kind, for the next command; and one hint line when
    the data was prepared at a length that does not suit it."""
    from recsys_dist.config import load_config, preset_for

    kind = preset_for(counts["events"], counts["users"])
    fits = kind is not None and load_config(kind).data.max_len == max_len
    hint = []
    if kind is not None and not fits:
        mean = counts["events"] / counts["users"]
        hint = [
            f"hint:   users average {mean:.0f} events and the model sees the last {max_len}: "
            f"`--config {kind}` fits this data (prepare and train with it)"
        ]
    return hint, f"--config {kind} " if fits else ""


COMMANDS = (
    Command(
        "import",
        "convert a log to a canonical dataset directory",
        _run_import,
        _import_summary,
        _import_arguments,
    ),
    Command(
        "generate",
        "a synthetic log whose interests drift",
        _run_generate,
        _generate_summary,
        _generate_arguments,
        starts_ray=True,
    ),
    Command(
        "prepare",
        "events → split sequence dataset (Ray Data)",
        _run_prepare,
        _prepare_summary,
        _prepare_arguments,
        starts_ray=True,
        # manifest.json keeps them: every input file, the per-file bad rows, the users cut to
        # data.max_history, the event-time histogram.
        json_omits=(
            *("time_histogram", "input_files", "consumed", "sources", "bad_rows", "skewed_users"),
        ),
    ),
)
