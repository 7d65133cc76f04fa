"""The recsys-dist command: thin wrappers over the library, one sub-command per stage.

Every sub-command prints a short human summary, or its whole result as one JSON document on
one line with --json (but for bulky internals it names, which stay in the files it wrote);
the frameworks stay quiet unless -v. -v, --json and --address (where the command starts Ray)
go before or after the sub-command. A failure is one line: exit 2 for bad input, 1 for the
environment (permissions, object store, Ray address), 130 for Ctrl-C; -v adds the
traceback. Every path may be local or s3://bucket/prefix (the standard AWS environment;
AWS_ENDPOINT_URL for MinIO and the like).
"""

from __future__ import annotations

import argparse
import time

from recsys_dist import console
from recsys_dist.cli import (
    config,
    data,
    evaluate,
    exits,
    interests,
    keys,
    models,
    predict,
    serve,
    train,
)
from recsys_dist.cli.command import PARSER_OPTIONS, Parser, add_command, global_flags
from recsys_dist.cli.common import init_ray, resolve_model_source
from recsys_dist.cli.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, user_error
from recsys_dist.errors import UserInputError

__all__ = [  # what jobs/, bench/ and tests use
    "COMMANDS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "build_parser",
    "init_ray",
    "main",
    "user_error",
]

MODULES = (data, train, evaluate, predict, serve, interests, config, models, keys)
COMMANDS = {command.name: command for module in MODULES for command in module.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    flags = [global_flags(address=True, in_subcommand=False)]
    top = Parser(prog="recsys-dist", description=__doc__, parents=flags, **PARSER_OPTIONS)
    top.add_argument("--version", action="version", version=f"recsys-dist {_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        add_command(commands, command)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command: 0 when done; else one line and 2, 1 or 130 (:mod:`.exits`)."""
    try:
        args = build_parser().parse_args(argv)
    except UserInputError as error:  # argparse's complaint, as one line
        return exits.bad_input(str(error))
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    command = COMMANDS[args.command]
    if args.address is not None and not command.starts_ray:
        return exits.bad_input(f"--address: `recsys-dist {command.name}` does not use Ray")
    console.setup(args.verbose)
    started = time.perf_counter()
    try:
        resolve_model_source(args)
        result = command.run(args)
    except (Exception, KeyboardInterrupt) as error:  # one line, or raised again for a bug
        interrupted = command.interrupted(args) if command.interrupted else "interrupted"
        return exits.handle(error, args.verbose, interrupted)
    try:
        if args.json and command.json_when_done:
            console.print_result(command.for_json(result), as_json=True)
        elif not args.json:
            seconds = time.perf_counter() - started
            console.print_result(result, lines=command.lines(result, args, seconds))
    except BrokenPipeError:  # `recsys-dist ... | head`: the reader has gone
        return exits.reader_gone()
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys-dist")
    except PackageNotFoundError:  # a source checkout that is not installed
        from recsys_dist import __version__

        return __version__
