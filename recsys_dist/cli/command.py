"""What a sub-command is made of, and the parser every sub-command's parser is.

A command module (``cli/data.py``, ``cli/train.py``, ...) holds, per command, its arguments,
its runner and its summary, and lists them as :class:`Command` values; ``cli/__init__.py``
only dispatches. The parser here turns argparse's complaints into one line (exit 2), shows
every default in ``--help``, takes no abbreviated flags, and accepts the global flags (``-v``,
``--json``, and ``--address`` where the command starts Ray) before or after the sub-command
and its action.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from recsys_dist.errors import UserInputError

Arguments = Callable[[argparse.ArgumentParser], None]
Summary = Callable[[dict, argparse.Namespace, float], list[str]]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a command or action without options of its own."""


@dataclass(frozen=True)
class Action:
    """One action of a command group (``models list``): its help and own arguments."""

    help: str
    arguments: Arguments = no_arguments


@dataclass(frozen=True)
class Command:
    """One sub-command: its parser's arguments, what it runs, how its result is shown.

    ``json_omits`` names the result keys left out of ``--json`` (bulky internals that stay in
    the files the command wrote, e.g. ``prepare``'s time histogram in ``manifest.json``);
    everything else is printed whole, however long. ``json_when_done=False`` for a command
    that printed its one JSON document itself (``serve``, when it starts). ``interrupted``
    gives the line for Ctrl-C where there is more to say than ``interrupted``.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], Any]
    summary: Summary | None = None
    arguments: Arguments = no_arguments
    actions: Mapping[str, Action] = field(default_factory=dict)
    starts_ray: bool = False
    description: str | None = None
    json_omits: tuple[str, ...] = ()
    json_when_done: bool = True
    interrupted: Callable[[argparse.Namespace], str] | None = None

    def for_json(self, result: Any) -> Any:
        """``result`` as printed by ``--json``: all of it but the keys in ``json_omits``."""
        payload = asdict(result) if is_dataclass(result) else result
        if not isinstance(payload, dict):
            return payload
        return {key: value for key, value in payload.items() if key not in self.json_omits}

    def lines(self, result: Any, args: argparse.Namespace, seconds: float) -> list[str] | None:
        """The summary for a person; None where the command has none (JSON, indented)."""
        payload = asdict(result) if is_dataclass(result) else result
        if self.summary is None or not isinstance(payload, dict):
            return None
        return self.summary(payload, args, seconds)


def done(*what: str, output: str | None = None, then: str | None = None) -> list[str]:
    """A summary's usual lines: what was done, where its output is, what to run next."""
    lines = [*what, *([f"output: {output}"] if output else [])]
    return [*lines, *([f"next:   recsys-dist {then}"] if then else [])]


# Flags renamed for consistency, with what to use: named when argparse refuses them.
RENAMED = {
    "--version": "a model version is --model-version V; --version alone prints the program's",
    "--users": "a count is --num-users N; --users takes user ids (interests)",
    "--items": "generate takes --num-items N",
    "--categories": "generate takes --num-categories N",
}


class Parser(argparse.ArgumentParser):
    """Raises a usage error (one line, exit 2 in ``cli.main``) instead of printing usage."""

    def error(self, message: str):
        hints = [hint for flag, hint in RENAMED.items() if re.search(rf"{flag}(\s|=|$)", message)]
        if "unrecognized arguments" in message and hints:
            message = f"{message} ({'; '.join(hints)})"
        raise UserInputError(f"{self.prog}: {message} (see {self.prog} --help)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help: ``(default: X)`` unless its help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text or action.required or not action.option_strings
        unset = any(action.default is value for value in (None, False, argparse.SUPPRESS))
        if shown or unset or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


PARSER_OPTIONS = {"formatter_class": HelpFormatter, "allow_abbrev": False}


def global_flags(address: bool, in_subcommand: bool) -> argparse.ArgumentParser:
    """-v, --json and (``address``) --address. The sub-commands' copies default to SUPPRESS,
    so they set a value only when given there, before or after an action."""
    flags = argparse.ArgumentParser(add_help=False)
    off, none = (argparse.SUPPRESS,) * 2 if in_subcommand else (False, None)
    flags.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=off,
        help="show the frameworks' logs and progress (Ray, DeepSpeed, transformers), and the "
        "traceback of an error before its one line",
    )
    flags.add_argument(
        "--json",
        action="store_true",
        default=off,
        help="print the result as one JSON document on one line instead of a summary",
    )
    if address:
        flags.add_argument(
            "--address",
            default=none,
            help="the Ray cluster to run on, e.g. HEAD:6379 or ray://HEAD:10001 "
            "(default: RAY_ADDRESS, else a local Ray started for the command)",
        )
    return flags


def add_command(commands: argparse._SubParsersAction, command: Command) -> None:
    """``command``'s parser, and one per action (each taking the command's own arguments)."""
    flags = [global_flags(command.starts_ray, in_subcommand=True)]
    sub = commands.add_parser(
        command.name,
        help=command.help,
        description=command.description or command.help,
        parents=flags,
        **PARSER_OPTIONS,
    )
    if not command.actions:
        command.arguments(sub)
        return
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, action in command.actions.items():
        parser = actions.add_parser(
            name, help=action.help, description=action.help, parents=flags, **PARSER_OPTIONS
        )
        command.arguments(parser)
        action.arguments(parser)
