"""Every sub-command's ``--help``: each option's default is shown, a flag offered by several
commands means the same everywhere (one definition), closed sets are choices taken from their
library homes, and ``--address`` is offered only where Ray starts."""

from __future__ import annotations

import argparse
import re

import pytest

from recsys_dist import cli
from recsys_dist.cli import common
from recsys_dist.errors import UserInputError


def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every sub-command's parser and every action's (``("models", "list")``)."""
    found = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[path] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk((*path, name), child)

    walk((), cli.build_parser())
    return found


PARSERS = parsers()
LEAVES = [pytest.param(path, id=" ".join(path)) for path in PARSERS]
# Flags whose meaning depends on the command by nature, and why; every other flag offered by
# more than one command has one definition (cli/common.py FLAGS) and reads the same.
MEANING_DIFFERS = {
    "--output": "what the command writes: a dataset, a run, a Parquet, JSON or HTML file",
    "--data": "prepare reads raw events; train needs a prepared dataset; the rest default "
    "to the one the run trained on (one definition, FLAGS['--data'])",
    "--split": "prepare: how to split (data.split); evaluate: which split to rank",
    "--num-users": "a count of users: generated (generate), drawn in detail (report)",
}
GLOBAL = {"-h", "-v", "--json", "--address"}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not GLOBAL & set(a.option_strings)]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("path", LEAVES)
def test_help_shows_every_default(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no words split at hyphens
    assert cli.main([*path, "--help"]) == 0
    shown = flat(capsys.readouterr().out)
    parser = PARSERS[path]
    chosen = {a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
    for action in options(parser):
        text = flat(parser._get_formatter()._expand_help(action))
        assert text in shown, (action.option_strings, text)
        if action.required or action in chosen or action.nargs == 0:  # required, or a switch
            continue
        assert "default" in text, (path, action.option_strings, text)
        if action.default is not None and not isinstance(action.default, list):
            assert f"(default: {action.default})" in text, (path, action.option_strings)


def definitions() -> dict[str, dict[tuple[str, ...], tuple]]:
    """Each option string -> where it is offered -> what defines it there."""
    seen: dict[str, dict[tuple[str, ...], tuple]] = {}
    for path, parser in PARSERS.items():
        for action in options(parser):
            shape = (action.help, action.type, action.choices, action.default, action.nargs)
            shape += (type(action).__name__, action.metavar)
            for flag in action.option_strings:
                seen.setdefault(flag, {})[path] = shape
    return seen


def test_a_flag_offered_by_several_commands_reads_the_same_everywhere():
    shared = {flag: where for flag, where in definitions().items() if len(where) > 1}
    assert {"--run", "--registry", "--model-version", "--k", "--workers", "--config"} <= set(shared)
    for flag, where in shared.items():
        if flag in MEANING_DIFFERS:
            continue
        assert len(set(where.values())) == 1, (flag, where)


def test_the_shared_definitions_are_the_ones_used():
    for flag, where in definitions().items():
        if flag in common.FLAGS and flag not in MEANING_DIFFERS:
            help_texts = {shape[0] for shape in where.values()}
            assert help_texts == {common.FLAGS[flag]["help"]}, flag


def test_users_are_ids_and_num_users_a_count():
    found = definitions()
    assert set(found["--users"]) == {("interests",)}
    assert found["--users"][("interests",)][4] == "+"  # one or more ids
    for shape in found["--num-users"].values():
        assert shape[1] is int or getattr(shape[1], "__name__", "").startswith("integer")
    assert "--version" not in found  # a model version is --model-version
    assert set(found["--model-version"]) == {
        (name,) for name in ("evaluate", "recommend", "score", "score-ratings", "export")
    } | {("interests",)}


def test_the_global_flags_are_everywhere_and_address_only_where_ray_starts():
    for path, parser in PARSERS.items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"-v", "--json"} <= flags, path
        assert ("--address" in flags) == cli.COMMANDS[path[0]].starts_ray, path
    ray_free = {name for name, command in cli.COMMANDS.items() if not command.starts_ray}
    assert ray_free == {"import", "export", "config", "models", "keys"}


def test_closed_sets_are_choices_from_their_homes():
    from recsys_dist import config, schema
    from recsys_dist.data.importers import FORMATS
    from recsys_dist.inference.predictor import RANK_BY
    from recsys_dist.model.quantize import SCHEMES

    found = definitions()

    def choices(flag: str, command: str) -> tuple:
        return tuple(found[flag][(command,)][2])

    assert choices("--quantize", "export") == SCHEMES
    assert choices("--rank-by", "recommend") == RANK_BY
    assert choices("--format", "import") == FORMATS
    assert choices("--split", "prepare") == config.SPLIT_METHODS
    assert choices("--on-bad-rows", "prepare") == config.BAD_ROW_POLICIES
    assert choices("--sampling", "evaluate") == config.SAMPLINGS
    assert choices("--split", "evaluate") == (schema.VALID_SPLIT, schema.TEST_SPLIT)


def test_workers_and_k_refuse_zero_before_anything_runs():
    parser = cli.build_parser()
    for argv in (
        ["train", "--data", "d", "--output", "o", "--workers", "0"],
        ["retrain", "--registry", "r", "--events", "e", "--workers", "0"],
        ["score", "--run", "r", "--output", "o", "--k", "0"],
    ):
        with pytest.raises(UserInputError, match="expected an integer >= 1"):
            parser.parse_args(argv)
    args = parser.parse_args(["retrain", "--registry", "r", "--events", "e", "--workers", "3"])
    assert (args.workers, args.gpu, args.config) == (3, False, None)
